"""``BudgetManager(client_type="local")``: LiteLLM's own BudgetManager scenarios, ported,
plus what LiteLLM's version gets wrong (28-day months, lost updates across processes,
floats), against a real SQLite file, in real processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger import BudgetManager
from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.fold import Charge, apply_batch, apply_command, new_state
from ledger.domain.pricing import price_event
from ledger.pricebooks.genai import genai_prices_book
from ledger.sdk.budget_manager import LOCAL_FILE_NAME, UnknownUser
from ledger.sdk.budget_manager.legacy import OldBudgetFile
from ledger.sdk.budget_manager.local import BudgetFileBusy
from ledger.sdk.budget_manager.records import event_from_completion
from ledger.tokenizer import count_tokens

MODEL = "gpt-4o-mini"


def price_nanos(model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """The bundled book's price of a call, computed apart from the manager."""
    event = UsageEvent(
        event_id="expected",
        occurred_at=datetime.now(UTC),
        model=model,
        usage=TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
    )
    return price_event(event, genai_prices_book()).cost_nanos


def completion(completion_id: str, prompt_tokens: int = 1_000, completion_tokens: int = 500) -> dict[str, Any]:
    return {
        "id": completion_id,
        "model": MODEL,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class Clock:
    """A settable clock, so a day can pass without waiting for it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def manager(tmp_path: Path) -> BudgetManager:
    return BudgetManager("test_project", client_type="local", path=tmp_path / "budgets.sqlite")


# -- LiteLLM's scenarios ---------------------------------------------------------------


def test_user_budget_enough_allows_the_call_and_charges_it(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="1234", duration="daily")
    assert manager.get_current_cost(user="1234") <= manager.get_total_budget("1234")

    answer = manager.update_cost(completion_obj=completion("call-1"), user="1234")

    expected = price_nanos(MODEL, 1_000, 500)
    assert answer["user"]["current_cost_nanos"] == expected
    assert answer["user"]["current_cost"] == expected / 1e9
    assert manager.get_current_cost_nanos("1234") == expected
    assert manager.get_model_cost("1234") == {MODEL: expected / 1e9}


def test_user_budget_not_enough_refuses(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=0, user="12345", duration="daily")
    assert not manager.get_current_cost(user="12345") < manager.get_total_budget(user="12345")


def test_save_reports_success_and_a_new_manager_sees_the_users(tmp_path: Path) -> None:
    path = tmp_path / "budgets.sqlite"
    first = BudgetManager("test_project", path=path)
    first.create_budget(total_budget=10, user="saved", duration="weekly")
    first.update_cost(completion_obj=completion("saved-1"), user="saved")

    assert first.save_data() == {"status": "success"}

    second = BudgetManager("test_project", path=path)
    assert second.get_users() == ["saved"]
    assert second.get_current_cost_nanos("saved") == price_nanos(MODEL, 1_000, 500)
    assert BudgetManager("other_project", path=path).get_users() == []


def test_get_users_lists_every_user_with_a_budget(manager: BudgetManager) -> None:
    for user in ("b", "a", "c"):
        manager.create_budget(total_budget=1, user=user)
    assert manager.get_users() == ["a", "b", "c"]
    assert manager.is_valid_user("a")
    assert not manager.is_valid_user("nobody")
    assert set(manager.user_dict) == {"a", "b", "c"}


def test_reset_on_duration_after_a_day_passed(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 10, 15, 0, tzinfo=UTC))
    manager = BudgetManager("test_project", path=tmp_path / "b.sqlite", clock=clock)
    manager.create_budget(total_budget=10, user="123456", duration="daily")
    manager.update_cost(completion_obj=completion("reset-1"), user="123456")
    assert manager.get_current_cost("123456") > 0

    clock.now += timedelta(days=1)
    manager.update_budget_all_users()

    assert manager.get_current_cost("123456") == 0
    assert manager.get_model_cost("123456") == {}
    assert manager.user_dict["123456"]["last_updated_at"] == datetime(2026, 3, 11, tzinfo=UTC).timestamp()


def test_reset_cost_zeroes_the_user_now(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="r", duration="daily")
    manager.update_cost(completion_obj=completion("r-1"), user="r")

    answer = manager.reset_cost("r")

    assert answer["user"]["current_cost"] == 0
    assert answer["user"]["model_cost"] == {}
    assert manager.get_current_cost("r") == 0


def test_input_and_output_text_are_counted_and_priced(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="12345", duration="daily")
    input_text, output_text = "hello world", "it's a sunny day in san francisco"

    manager.update_cost(user="12345", model=MODEL, input_text=input_text, output_text=output_text)

    expected = price_nanos(MODEL, count_tokens(input_text), count_tokens(output_text))
    assert expected > 0
    assert manager.get_current_cost_nanos("12345") == expected


def test_create_budget_takes_the_time_at_each_call(manager: BudgetManager) -> None:
    # LiteLLM's default was time.time() frozen at import (its issue 18459).
    first = manager.create_budget(total_budget=100.0, user="user1", duration="daily")
    time.sleep(0.1)
    second = manager.create_budget(total_budget=100.0, user="user2", duration="daily")
    assert second["created_at"] > first["created_at"]


def test_create_budget_keeps_a_custom_created_at(manager: BudgetManager) -> None:
    budget = manager.create_budget(total_budget=100.0, user="user_custom", duration="daily", created_at=1234567890.0)
    assert budget["created_at"] == 1234567890.0
    assert manager.user_dict["user_custom"]["created_at"] == 1234567890.0


# -- beyond LiteLLM ----------------------------------------------------------------------


def test_monthly_is_a_calendar_month_not_28_days(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 1, 1, tzinfo=UTC))
    manager = BudgetManager("p", path=tmp_path / "b.sqlite", clock=clock)
    manager.create_budget(total_budget=10, user="m", duration="monthly")
    manager.update_cost(completion_obj=completion("m-1"), user="m")

    clock.now = datetime(2026, 1, 29, tzinfo=UTC)  # LiteLLM's 28 days have passed
    assert manager.get_current_cost_nanos("m") == price_nanos(MODEL, 1_000, 500)

    clock.now = datetime(2026, 2, 1, tzinfo=UTC)
    assert manager.get_current_cost_nanos("m") == 0
    assert manager.user_dict["m"]["last_updated_at"] == datetime(2026, 2, 1, tzinfo=UTC).timestamp()


def test_a_completion_charged_twice_counts_once(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="d")
    manager.update_cost(completion_obj=completion("same-id"), user="d")
    manager.update_cost(completion_obj=completion("same-id"), user="d")
    assert manager.get_current_cost_nanos("d") == price_nanos(MODEL, 1_000, 500)


def test_create_budget_again_changes_the_limit_and_keeps_the_spend(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="k", duration="daily")
    manager.update_cost(completion_obj=completion("k-1"), user="k")
    manager.create_budget(total_budget=20, user="k", duration="daily")
    assert manager.get_total_budget_nanos("k") == 20_000_000_000
    assert manager.get_current_cost_nanos("k") == price_nanos(MODEL, 1_000, 500)


def test_budgets_are_exact_decimal_amounts(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=0.1, user="x")
    manager.create_budget(total_budget="0.3", user="y")
    assert manager.get_total_budget_nanos("x") == 100_000_000
    assert manager.get_total_budget_nanos("y") == 300_000_000


def test_unknown_users_raise_key_error_as_litellm(manager: BudgetManager) -> None:
    with pytest.raises(KeyError):
        manager.get_total_budget("ghost")
    with pytest.raises(UnknownUser, match="create_budget first"):
        manager.update_cost(completion_obj=completion("g"), user="ghost")


def test_bad_arguments_get_clear_errors(manager: BudgetManager) -> None:
    with pytest.raises(ValueError, match="unknown budget duration 'fortnightly'"):
        manager.create_budget(total_budget=1, user="u", duration="fortnightly")
    with pytest.raises(ValueError, match="completion object or the text"):
        manager.update_cost(user="u")
    with pytest.raises(ValueError, match="control character"):
        manager.create_budget(total_budget=1, user="bad\nuser")
    with pytest.raises(ValueError, match="cannot be negative"):
        manager.create_budget(total_budget=-1, user="u")
    with pytest.raises(ValueError, match="client_type"):
        BudgetManager("p", client_type="cloud")


def test_an_unpriced_model_raises_and_charges_nothing(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=1, user="u")
    with pytest.raises(ValueError, match="no price"):
        manager.update_cost(completion_obj={**completion("u-1"), "model": "no-such-model-xyz"}, user="u")
    assert manager.get_current_cost_nanos("u") == 0


def test_default_file_is_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    BudgetManager("p").create_budget(total_budget=1, user="u")
    assert (tmp_path / LOCAL_FILE_NAME).is_file()


def test_litellm_and_openai_response_objects_are_accepted(manager: BudgetManager) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from openai.types.chat import ChatCompletion

    manager.create_budget(total_budget=10, user="o")
    response = litellm.completion(model=MODEL, messages=[{"role": "user", "content": "hi"}], mock_response="hello")
    manager.update_cost(completion_obj=response, user="o")
    # Both books price gpt-4o-mini the same: our exact cost is LiteLLM's.
    assert manager.get_current_cost_nanos("o") == round(litellm.completion_cost(completion_response=response) * 1e9)

    openai_response = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-openai-1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 1_000, "completion_tokens": 500, "total_tokens": 1_500},
        }
    )
    before = manager.get_current_cost_nanos("o")
    manager.update_cost(completion_obj=openai_response, user="o")
    assert manager.get_current_cost_nanos("o") - before == price_nanos(MODEL, 1_000, 500)


# -- across processes ---------------------------------------------------------------------

CHARGING_PROCESS = textwrap.dedent(
    """
    import sys
    from ledger import BudgetManager

    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    manager = BudgetManager("test_project", path=path, timeout_s=60)
    manager.get_users()  # imports done, file open
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts charging at once
    for i in range(count):
        manager.update_cost(
            user="shared",
            completion_obj={"id": f"{prefix}-{i}", "model": "gpt-4o-mini",
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
        )
        print(i, flush=True)  # after update_cost returned
    """
)
PROCESS_TIMEOUT_S = 120


def charging_process(path: Path, prefix: str, count: int) -> subprocess.Popen[str]:
    """A process that charges ``count`` completions ``<prefix>-<n>`` to user "shared", once
    told to start; it prints each n after its update returned."""
    command = [sys.executable, "-c", CHARGING_PROCESS, str(path), prefix, str(count)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", process.stderr.read() if process.stderr else ""
    return process


def start(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def run_processes(path: Path, prefixes: list[str], count: int) -> None:
    """Processes charging at the same time, each until done."""
    processes: list[subprocess.Popen[str]] = []
    try:
        processes = [charging_process(path, prefix, count) for prefix in prefixes]
        start(processes)
        for process in processes:
            _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
            assert process.returncode == 0, stderr
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def shared_budget(path: Path) -> BudgetManager:
    manager = BudgetManager("test_project", path=path)
    manager.create_budget(total_budget=100, user="shared", duration="daily")
    return manager


def test_two_processes_charging_one_user_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    shared_budget(path)
    per_process = 200

    run_processes(path, ["a", "b"], per_process)

    manager = BudgetManager("test_project", path=path)
    assert manager.get_current_cost_nanos("shared") == 2 * per_process * price_nanos(MODEL, 1_000, 500)
    assert manager.get_budget("shared").model_cost_nanos == {MODEL: 2 * per_process * price_nanos(MODEL, 1_000, 500)}


def test_a_completion_retried_by_two_processes_at_once_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    shared_budget(path)
    completions = 100

    run_processes(path, ["same", "same"], completions)

    assert BudgetManager("test_project", path=path).get_current_cost_nanos("shared") == completions * price_nanos(
        MODEL, 1_000, 500
    )


def test_an_update_that_returned_survives_sigkill_of_its_process(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    shared_budget(path)
    before_kill = 50
    process = charging_process(path, "killed", 1_000_000)
    try:
        start([process])
        assert process.stdout is not None
        for _ in range(before_kill):
            assert process.stdout.readline().strip(), process.stderr.read() if process.stderr else ""
        os.kill(process.pid, signal.SIGKILL)  # wherever it is: between updates or inside one
        process.wait(timeout=10)
        reported = before_kill + len(process.stdout.read().split())  # what it printed before dying
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    manager = BudgetManager("test_project", path=path)
    charged_nanos = manager.get_current_cost_nanos("shared")
    price = price_nanos(MODEL, 1_000, 500)
    # Every reported update is there; at most one more was committed and not yet reported.
    assert charged_nanos in (reported * price, (reported + 1) * price)
    for i in range(reported):
        manager.update_cost(user="shared", completion_obj=completion(f"killed-{i}"))
    assert manager.get_current_cost_nanos("shared") == charged_nanos  # all were charged already
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_manager_made_before_fork_charges_from_both_processes(tmp_path: Path) -> None:
    manager = shared_budget(tmp_path / "forked.sqlite")
    per_process = 50

    def charge_all(prefix: str) -> None:
        for i in range(per_process):
            manager.update_cost(user="shared", completion_obj=completion(f"{prefix}-{i}"))

    child = multiprocessing.get_context("fork").Process(target=charge_all, args=("child",))
    child.start()
    try:
        charge_all("parent")
        child.join(timeout=PROCESS_TIMEOUT_S)
    finally:
        child.kill()
        child.join(timeout=10)
    assert child.exitcode == 0

    assert manager.get_current_cost_nanos("shared") == 2 * per_process * price_nanos(MODEL, 1_000, 500)


HOLDING_PROCESS = textwrap.dedent(
    """
    import sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")  # the file's write lock, held
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_file_held_too_long_by_another_process_is_a_clear_error_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite"
    manager = BudgetManager("p", path=path, timeout_s=0.5)
    manager.create_budget(total_budget=1, user="before")
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_PROCESS, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BudgetFileBusy, match="stayed locked by another process"):
            manager.create_budget(total_budget=1, user="during")
        assert manager.get_users() == ["before"]  # a read never waits for the writer
    finally:
        holder.kill()
        holder.wait(timeout=10)
    manager.create_budget(total_budget=1, user="after")
    assert manager.get_users() == ["after", "before"]


# -- the earlier backend's DuckDB file ------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE budget_manager_users (
    project VARCHAR NOT NULL, user_id VARCHAR NOT NULL, created_at DOUBLE NOT NULL, state VARCHAR NOT NULL,
    PRIMARY KEY (project, user_id)
);
CREATE TABLE budget_manager_charges (
    project VARCHAR NOT NULL, user_id VARCHAR NOT NULL, event_id VARCHAR NOT NULL, occurred_at TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL, cost_nanos BIGINT NOT NULL, PRIMARY KEY (project, user_id, event_id)
);
"""
OLD_BUDGET_AT = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def write_old_file(path: Path, charges: dict[tuple[str, str], list[tuple[str, datetime, str, int]]]) -> None:
    """A DuckDB file as the earlier local backend left it: each (project, user) a daily
    $10 budget from OLD_BUDGET_AT, charged (event_id, occurred_at, model, cost_nanos) by the fold."""
    connection = duckdb.connect(str(path))
    try:
        connection.execute(OLD_SCHEMA)
        for (project, user), rows in charges.items():
            command = BudgetCommand(
                command_id=f"old-{user}",
                scope_key=f"user:{user}",
                action="upsert",
                issued_at=OLD_BUDGET_AT,
                budgets=(BudgetSpec(max_budget_nanos=10_000_000_000, duration="daily"),),
            )
            state, _ = apply_command(new_state(command.scope_key), command)
            state, _ = apply_batch(state, [Charge(*row) for row in rows])
            created_at = OLD_BUDGET_AT.timestamp()
            connection.execute(
                "INSERT INTO budget_manager_users VALUES (?, ?, ?, ?)",
                [project, user, created_at, state.model_dump_json()],
            )
            for row in rows:
                connection.execute(
                    "INSERT INTO budget_manager_charges VALUES (?, ?, ?, ?, ?, ?)", [project, user, *row]
                )
    finally:
        connection.close()


OLD_CHARGES = {
    ("test_project", "alice"): [
        ("e-1", datetime(2026, 3, 10, 10, 0, tzinfo=UTC), "gpt-4o-mini", 450_000),
        ("e-2", datetime(2026, 3, 10, 11, 0, tzinfo=UTC), "gpt-4o", 1_250_000),
        ("e-3", datetime(2026, 3, 10, 12, 0, tzinfo=UTC), "gpt-4o-mini", 450_000),
    ],
    ("test_project", "bob"): [("e-4", datetime(2026, 3, 10, 10, 30, tzinfo=UTC), "gpt-4o", 1_250_000)],
    ("other_project", "carol"): [("e-5", datetime(2026, 3, 10, 10, 0, tzinfo=UTC), "gpt-4o", 3)],
}


def test_a_new_file_imports_the_old_duckdb_file_next_to_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "user_cost.duckdb"
    write_old_file(old, OLD_CHARGES)
    old_bytes = old.read_bytes()
    clock = Clock(datetime(2026, 3, 10, 15, 0, tzinfo=UTC))

    manager = BudgetManager("test_project", clock=clock)  # the default file, user_cost.sqlite

    assert manager.path == tmp_path / LOCAL_FILE_NAME
    assert manager.get_users() == ["alice", "bob"]
    assert manager.get_current_cost_nanos("alice") == 2_150_000
    assert manager.get_budget("alice").model_cost_nanos == {"gpt-4o": 1_250_000, "gpt-4o-mini": 900_000}
    assert manager.get_total_budget_nanos("bob") == 10_000_000_000
    assert manager.user_dict["bob"]["created_at"] == OLD_BUDGET_AT.timestamp()
    assert BudgetManager("other_project", clock=clock).get_current_cost_nanos("carol") == 3
    assert old.read_bytes() == old_bytes  # only read

    # A completion the old backend charged is still charged once.
    manager.update_cost(user="bob", completion_obj=completion("new-1"))
    old.unlink()
    write_old_file(old, {("test_project", "dave"): []})  # read once: a later change is not imported
    reopened = BudgetManager("test_project", clock=clock)
    assert reopened.get_users() == ["alice", "bob"]
    assert reopened.get_current_cost_nanos("bob") == 1_250_000 + price_nanos(MODEL, 1_000, 500)


def test_an_imported_charge_retried_counts_once(tmp_path: Path) -> None:
    old = tmp_path / "budgets.duckdb"
    clock = Clock(datetime(2026, 3, 10, 15, 0, tzinfo=UTC))
    # The event id the old backend stored for completion "old-call" (the same derivation).
    retried_event_id = event_from_completion(
        completion("old-call"), project_name="test_project", user="erin", occurred_at=clock.now
    ).event_id
    write_old_file(
        old, {("test_project", "erin"): [(retried_event_id, datetime(2026, 3, 10, 14, 0, tzinfo=UTC), MODEL, 450_000)]}
    )

    manager = BudgetManager("test_project", path=tmp_path / "budgets.sqlite", clock=clock)
    manager.update_cost(user="erin", completion_obj=completion("old-call"))

    assert manager.get_current_cost_nanos("erin") == 450_000


def test_a_path_naming_the_old_duckdb_file_is_refused_with_the_path_to_pass(tmp_path: Path) -> None:
    old = tmp_path / "budgets.duckdb"
    write_old_file(old, OLD_CHARGES)

    with pytest.raises(OldBudgetFile, match=r"budgets\.duckdb is a DuckDB file .* pass path='.*budgets\.sqlite'"):
        BudgetManager("test_project", path=old)

    assert BudgetManager("test_project", path=tmp_path / "budgets.sqlite").get_users() == ["alice", "bob"]
