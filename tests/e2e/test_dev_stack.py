"""``spend-ledger dev``: one command brings up the broker, a worker and the api on
localhost; ``--demo`` leaves spend and an exceeded budget to look at; one signal stops
everything it started, and nothing outlives it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import DevRun, alive, children_of

pytestmark = pytest.mark.timeout(300)

# How long to wait for the children of a killed dev process (the kernel SIGKILLs them) to go.
CHILD_EXIT_AFTER_PARENT_S = 30.0
PREFIXED_LINE = re.compile(r"^(broker|worker|api   |dev   ) \| ")


def test_the_stack_is_ready_and_its_admin_routes_take_the_generated_master_key(dev_stack: DevRun) -> None:
    assert httpx.get(f"{dev_stack.api_url}/readyz").status_code == 200
    assert dev_stack.master_key.startswith("sk-dev-")
    assert httpx.get(f"{dev_stack.api_url}/v1/budgets").status_code == 401
    authorized = {"Authorization": f"Bearer {dev_stack.master_key}"}
    assert httpx.get(f"{dev_stack.api_url}/v1/budgets", headers=authorized).status_code == 200


def test_broker_worker_and_api_are_the_dev_process_children(dev_stack: DevRun) -> None:
    pids = dev_stack.started_pids()
    assert set(pids) == {"catalog", "broker", "worker", "api"}
    assert children_of(dev_stack.pid) == set(pids.values())


def test_every_log_line_names_the_process_that_wrote_it(dev_stack: DevRun) -> None:
    log_stream = dev_stack.stdout().split("\n\n", 1)[0].splitlines()  # up to the summary
    assert log_stream
    assert [line for line in log_stream if not PREFIXED_LINE.match(line)] == []
    assert any(line.startswith("broker | ") for line in log_stream)


def test_the_demo_shows_spend_and_an_exceeded_budget_on_the_first_screen(dev_stack: DevRun) -> None:
    screen = dev_stack.stdout()
    assert re.search(r"^  research +gpt-4o +2 +0\.\d+$", screen, re.M), screen
    assert re.search(r"^  team:research .* EXCEEDED$", screen, re.M), screen
    assert "team:research [daily] exceeded: Budget has been exceeded! Current cost: " in screen
    check = httpx.get(
        f"{dev_stack.api_url}/v1/check",
        params={"team": "research"},
        headers={"Authorization": f"Bearer {dev_stack.master_key}"},
    )
    assert check.status_code == 402
    assert check.json()["error"]["message"].startswith("Budget has been exceeded! Current cost: ")


def test_the_summary_names_the_urls_and_the_master_key(dev_stack: DevRun) -> None:
    screen = dev_stack.stdout()
    for url in ("", "/docs", "/metrics"):
        assert f" {dev_stack.api_url}{url}\n" in screen
    assert httpx.get(f"{dev_stack.api_url}/docs").status_code == 200
    assert httpx.get(f"{dev_stack.api_url}/metrics").status_code == 200
    assert f"  master key  {dev_stack.master_key}\n" in screen


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_three_printed_curl_lines_work_as_printed(dev_stack: DevRun) -> None:
    check, publish, spend = dev_stack.try_commands()
    assert all(f"Authorization: Bearer {dev_stack.master_key}" in line for line in (check, publish, spend))

    def run(line: str) -> str:
        done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    assert run(check).startswith("HTTP/1.1 402")
    answer = run(publish)
    assert answer.startswith("HTTP/1.1 202")
    assert json.loads(answer.split("\n\n", 1)[1])["accepted"] == 1
    rows = json.loads(run(spend))["rows"]
    assert {(row["groups"]["team"], row["groups"]["model"]) for row in rows} >= {("research", "gpt-4o")}


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda run: run.process.send_signal(signal.SIGTERM), id="SIGTERM to the dev pid"),
        pytest.param(DevRun.ctrl_c, id="Ctrl-C: SIGINT to the dev process group"),
    ],
)
def test_a_stop_signal_stops_api_worker_and_broker_in_order_and_exits_0(
    start_dev: Callable[..., DevRun], stop: Callable[[DevRun], None]
) -> None:
    run = start_dev()
    run.wait_ready()
    pids = run.started_pids()
    assert children_of(run.pid) == set(pids.values())

    stop(run)

    assert run.wait() == 0, run.stderr() + run.stdout()[-4000:]
    assert {name: pid for name, pid in pids.items() if alive(pid)} == {}
    assert re.findall(r"^dev +\| stopping the (\w+) \(pid", run.stdout(), re.M) == [
        "api",
        "worker",
        "broker",
        "catalog",
    ]
    assert run.stdout().rstrip().endswith("dev    | stopped")


def test_a_child_that_dies_stops_the_stack_with_an_error_naming_it(start_dev: Callable[..., DevRun]) -> None:
    run = start_dev()
    run.wait_ready()
    pids = run.started_pids()

    os.kill(pids["worker"], signal.SIGKILL)

    assert run.wait() == 2
    assert f"error: the worker (pid {pids['worker']}) was killed by SIGKILL" in run.stderr()
    assert {name: pid for name, pid in pids.items() if alive(pid)} == {}


def test_a_dev_process_killed_outright_leaves_no_child_behind(start_dev: Callable[..., DevRun]) -> None:
    run = start_dev()
    run.wait_ready()
    pids = run.started_pids()

    os.kill(run.pid, signal.SIGKILL)  # no shutdown code runs: the kernel signals the children
    run.wait()

    deadline = time.monotonic() + CHILD_EXIT_AFTER_PARENT_S
    while (running := {name: pid for name, pid in pids.items() if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running == {}


@pytest.mark.parametrize("option", ["--api-port", "--broker-port"])
def test_a_busy_port_names_the_option_to_change_and_starts_nothing(
    start_dev: Callable[..., DevRun], option: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start_dev(**{option.removeprefix("--").replace("-", "_"): port})
        assert run.wait(timeout_s=30) == 2
    process = "api" if option == "--api-port" else "broker"
    assert f"port {port} on 127.0.0.1 for the {process} is already in use; choose another with {option}" in (
        run.stderr()
    )
    assert "started the" not in run.stdout()
    assert not run.data_dir.exists()


def test_sql_spend_and_replay_read_the_store_while_the_stack_runs_and_agree_with_the_api(dev_stack: DevRun) -> None:
    """The store answers every reader while the api writes it: the printed ``spend-ledger
    sql`` line as printed, ``spend by`` and a dry ``replay``, each agreeing with the api."""
    (printed,) = [line.strip() for line in dev_stack.stdout().splitlines() if "/spend-ledger sql " in line]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPEND_LEDGER_", "KAFKA_"))}
    env = {
        **base,
        "SPEND_LEDGER_STORE_PATH": str(dev_stack.data_dir / "store"),
        "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{dev_stack.broker_port}",
    }

    def cli(*arguments: str) -> str:
        done = subprocess.run(
            [".venv/bin/spend-ledger", *arguments], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def api_by_model() -> dict[str, int]:
        answer = httpx.get(
            f"{dev_stack.api_url}/v1/spend",
            params={"group_by": "model"},
            headers={"Authorization": f"Bearer {dev_stack.master_key}"},
        )
        return {row["groups"]["model"]: row["spend_nanos"] for row in answer.json()["rows"]}

    deadline = time.monotonic() + 30
    while True:  # the projector may commit between two reads: until two agree (bounded)
        before = api_by_model()
        sql_rows = json.loads(
            cli("sql", "SELECT model, sum(cost_nanos) AS spend_nanos FROM ledger_entries GROUP BY 1", "--json")
        )
        by_sql = {row["model"]: row["spend_nanos"] for row in sql_rows}
        by_cli = {row["model"]: row["spend_nanos"] for row in json.loads(cli("spend", "by", "-g", "model", "--json"))}
        if before == by_sql == by_cli == api_by_model() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert before, "the demo left no spend"
    assert by_sql == before
    assert by_cli == before

    done = subprocess.run(["sh", "-c", printed], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "gpt-4o" in done.stdout
    assert "live state equals the replay" in cli("replay")
