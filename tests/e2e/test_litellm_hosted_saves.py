"""LiteLLM's own hosted ``BudgetManager`` (the real ``litellm`` package) saving to and
loading from a real `spend-ledger dev` stack: a save is read back at once, from any
process, and two managers saving at the same moment both keep their users."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx

SAVES_IN_A_ROW = 50
PROCESS_TIMEOUT_S = 120.0

# One LiteLLM manager in its own process: creates its user when told to go, saves (the
# synchronous save_data LiteLLM's create_budget runs in a thread), says so, then waits to
# be told both saves are done and prints the users a fresh manager loads.
MANAGER_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from litellm import BudgetManager

    api_base, key, project, user, folder = sys.argv[1:6]
    folder = Path(folder)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    manager = BudgetManager(project, client_type="hosted", api_base=api_base, headers=headers)
    while not (folder / "go").exists():
        time.sleep(0.001)
    manager.user_dict[user] = {"total_budget": 10, "duration": 1, "created_at": time.time(),
                               "last_updated_at": time.time()}
    saved = manager.save_data()
    (folder / f"saved-{user}").write_text(json.dumps(saved))
    while not (folder / "both-saved").exists():
        time.sleep(0.01)
    fresh = BudgetManager(project, client_type="hosted", api_base=api_base, headers=headers)
    print(json.dumps(sorted(fresh.get_users())))
    """
)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def saved_user(admin: httpx.Client, project: str, user: str) -> httpx.Response:
    entry = {"total_budget": 10.0, "current_cost": 0, "model_cost": {}, "duration": 1}
    return admin.post("/set_budget", json={"project_name": project, "user_dict": {user: entry}})


def test_a_save_is_read_back_by_the_next_load_every_time(admin: httpx.Client):
    project = unique("read-your-save")
    for _ in range(SAVES_IN_A_ROW):
        user = unique("user")
        saved = saved_user(admin, project, user)
        assert saved.status_code == 200, saved.text
        assert (saved.json()["status"], saved.json()["applied"]) == ("success", True)
        loaded = admin.post("/get_budget", json={"project_name": project})
        assert loaded.status_code == 200
        entry = loaded.json()["data"][user]
        assert (entry["total_budget_nanos"], entry["duration_text"]) == (10_000_000_000, "daily")


def test_two_litellm_managers_in_two_processes_saving_at_once_both_keep_their_users(
    stack_url: str, stack_key: str, tmp_path: Path
):
    project = unique("two-managers")
    users = [unique("first"), unique("second")]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MANAGER_PROCESS, stack_url, stack_key, project, user, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user in users
    ]
    try:
        (tmp_path / "go").touch()
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not all((tmp_path / f"saved-{user}").exists() for user in users):
            assert all(process.poll() is None for process in processes), [p.communicate() for p in processes]
            assert time.monotonic() < deadline, "the managers did not save in time"
            time.sleep(0.05)
        (tmp_path / "both-saved").touch()
        outputs = [process.communicate(timeout=PROCESS_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        seen = json.loads(out.strip().splitlines()[-1])  # every user: /get_budget serves them all
        assert set(users) <= set(seen)
