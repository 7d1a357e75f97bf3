"""The dev stack survives a restart: its broker keeps nothing, its store keeps everything,
and ``spend-ledger dev`` restores live state from the store before it says it is ready
(DESIGN section 7). Stopped with SIGTERM, or with every process SIGKILLed, the restarted
stack answers as before, alerts no crossing again, charges a retried event once and
continues the totals to the nano."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ledger.domain.events import UsageEvent
from ledger.domain.pricing import price_event
from ledger.pricebooks.genai import genai_prices_book
from ledger.tokenizer import count_tokens
from tests.e2e.conftest import DevRun, alive

pytestmark = pytest.mark.timeout(420)

MASTER_KEY = "sk-dev-restore-test-key"
SETTLE_TIMEOUT_S = 60.0
DAILY_TEAM, MONTHLY_USER = "restore-daily", "restore-monthly"
# Gauges and store counters: what the store and live state hold, not what one process did.
LEDGER_METRICS = re.compile(
    r"^spend_ledger_(remaining_budget_usd|max_budget_usd|window_spend_usd|budget_exceeded|total_spend_usd"
    r"|events_stored_total|events_charged_total|adjustments_total|events_dead_lettered_total|alerts_total)\b"
)
CROSSINGS = ("exceeded", "soft-threshold")


def _event(event_id: str, prompt: int = 100_000, completion: int = 20_000) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "model": "gpt-4o",
        "provider": "openai",
        "team_id": DAILY_TEAM,
        "user_id": MONTHLY_USER,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def _cost(event: dict[str, Any]) -> int:
    return price_event(UsageEvent.model_validate(event), genai_prices_book(), count_tokens=count_tokens).cost_nanos


def _until(condition: Callable[[], Any], what: str, timeout_s: float = SETTLE_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        time.sleep(0.25)


class Ledger:
    """The api of one running stack, as a client."""

    def __init__(self, run: DevRun) -> None:
        self.http = httpx.Client(base_url=run.api_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30.0)

    def get(self, path: str, **params: str) -> Any:
        answer = self.http.get(path, params=params)
        assert answer.status_code in (200, 402), answer.text
        return answer.status_code, answer.json()

    def answers(self) -> dict[str, Any]:
        """Everything the test compares across the restart."""
        metrics = self.http.get("/metrics").text
        return {
            "check": self.get("/v1/check", team=DAILY_TEAM, user=MONTHLY_USER),
            "spend": self.get("/v1/spend", group_by="team,user,model"),
            "budgets": self.get("/v1/budgets"),
            "team": self.get(f"/v1/budgets/team/{DAILY_TEAM}"),
            "metrics": sorted(line for line in metrics.splitlines() if LEDGER_METRICS.match(line)),
        }

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/v1/alerts")[1]["alerts"]

    def total(self, scope: str) -> int:
        kind, scope_id = scope.split(":")
        return int(self.get(f"/v1/budgets/{kind}/{scope_id}")[1]["total_spend_nanos"])

    def differences(self) -> int:
        answer = self.http.post("/v1/replay", json={})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["difference_count"])


def _start(folder: Path) -> tuple[DevRun, Ledger]:
    run = DevRun(folder, env={"SPEND_LEDGER_MASTER_KEY": MASTER_KEY})
    run.wait_ready()
    return run, Ledger(run)


def _crossings_on_topic(run: DevRun) -> list[tuple[str, str]]:
    """The crossings on the (new) broker's ``budget-alerts`` topic, read whole."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[tuple[str, str]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{run.broker_port}", enable_auto_commit=False)
        await consumer.start()
        try:
            topic = "spend-ledger.budget-alerts"
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                return []
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            found = []
            for batch in (await consumer.getmany(timeout_ms=2_000)).values():
                for record in batch:
                    alert = orjson.loads(record.value or b"{}")
                    if alert.get("kind") in CROSSINGS:
                        found.append((alert["scope_key"], alert["kind"]))
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restarted_dev_stack_answers_as_before_and_carries_on(tmp_path: Path, stop: str) -> None:
    run, ledger = _start(tmp_path)
    try:
        assert "restoring live state" not in run.stdout()  # a new store: nothing to restore
        for kind, scope_id, body in (
            ("team", DAILY_TEAM, {"max_budget": "1.00", "soft_budget": "0.50", "budget_duration": "1d"}),
            ("user", MONTHLY_USER, {"max_budget": "50.00", "soft_budget": "0.60", "budget_duration": "monthly"}),
        ):
            answer = ledger.http.put(f"/v1/budgets/{kind}/{scope_id}", json=body)
            assert answer.status_code == 200, answer.text
        events = [_event(f"{stop}-{n}") for n in range(3)]  # $0.45 each: past $0.50 soft, $1 hard
        assert ledger.http.post("/v1/usage", json={"events": events}).status_code == 202
        charged = sum(_cost(event) for event in events)
        _until(lambda: ledger.total(f"team:{DAILY_TEAM}") == charged, "the worker to charge the events")

        def stored_alerts() -> list[dict[str, Any]]:
            alerts = ledger.alerts()
            kinds = {(a["scope_key"], a["kind"]) for a in alerts}
            wanted = {
                (f"team:{DAILY_TEAM}", "soft-threshold"),
                (f"team:{DAILY_TEAM}", "exceeded"),
                (f"user:{MONTHLY_USER}", "soft-threshold"),
            }
            return alerts if wanted <= kinds else []

        alerts_before = _until(stored_alerts, "the store to hold the crossings")
        _until(lambda: ledger.get("/v1/spend", group_by="team")[1]["rows"], "the store to hold the spend")
        before = ledger.answers()
        assert before["check"][0] == 402
    finally:
        ledger.http.close()
        if stop == "SIGTERM":
            assert run.stop(signal.SIGTERM) == 0, run.stdout()
        else:
            run.kill()

    run, ledger = _start(tmp_path)
    try:
        screen = run.stdout()
        assert "restoring live state from it" in screen, screen
        summary = re.search(
            r"restored (\d+) scopes \((\d+) with budgets from (\d+) budget commands\), (\d+) event", screen
        )
        assert summary, screen
        print(next(line for line in screen.splitlines() if "restored " in line))
        assert summary.groups() == ("3", "2", "2", "3"), screen  # global, the team and the user
        after = ledger.answers()
        for name in before:
            assert after[name] == before[name], name
        assert _crossings_on_topic(run) == []  # no crossing alerted a second time

        retried = events[0]  # a producer's retry of an event from before the stop
        more = _event(f"{stop}-after", prompt=10_000, completion=1_000)
        assert ledger.http.post("/v1/usage", json={"events": [retried]}).status_code == 202
        assert ledger.http.post("/v1/usage", json={"events": [more]}).status_code == 202
        expected = charged + _cost(more)
        _until(lambda: ledger.total(f"team:{DAILY_TEAM}") == expected, "the new event's charge")
        _until(lambda: ledger.total(f"user:{MONTHLY_USER}") == expected, "the new event's charge to the user")
        _until(lambda: ledger.total("global:*") == expected, "the new event's global charge")
        _until(lambda: ledger.differences() == 0, "live state to equal the store's replay", timeout_s=30.0)
        assert _crossings_on_topic(run) == []
        assert sorted(a["alert_id"] for a in ledger.alerts()) == sorted(a["alert_id"] for a in alerts_before)
    finally:
        ledger.http.close()
        assert run.stop(signal.SIGTERM) == 0, run.stdout()


KILLED_RESTARTS = 3


def test_dev_killed_outright_starts_again_at_once_on_the_same_ports_and_restores(
    start_dev: Callable[..., DevRun],
) -> None:
    # As a closed terminal or `kill -9` leaves it, then `spend-ledger dev` again in the same
    # folder as soon as the killed one is reaped: its broker's port, its api's port and its
    # store are free again, nothing of it is left running, and live state comes back.
    env = {"SPEND_LEDGER_MASTER_KEY": MASTER_KEY}
    run = start_dev(env=env)
    run.wait_ready()
    ledger = Ledger(run)
    try:
        answer = ledger.http.put(f"/v1/budgets/team/{DAILY_TEAM}", json={"max_budget": "1.00", "budget_duration": "1d"})
        assert answer.status_code == 200, answer.text
        events = [_event(f"killed-{n}") for n in range(2)]  # $0.45 each: under the $1 budget
        assert ledger.http.post("/v1/usage", json={"events": events}).status_code == 202
        charged = sum(_cost(event) for event in events)
        _until(lambda: ledger.total(f"team:{DAILY_TEAM}") == charged, "the worker to charge the events")

        def entries_stored() -> int:
            return sum(int(row["entry_count"]) for row in ledger.get("/v1/spend", group_by="team")[1]["rows"])

        # What the killed broker held and the store did not is gone: wait for the store.
        _until(lambda: entries_stored() == len(events), "the store to hold the ledger entries")
        _until(lambda: ledger.differences() == 0, "the store to hold what live state holds")
        before = ledger.answers()
    finally:
        ledger.http.close()

    for restart in range(1, KILLED_RESTARTS + 1):
        killed = run.started_pids()
        os.killpg(run.pid, signal.SIGKILL)  # the dev process's group: it alone, its children have their own
        run.process.wait()
        run = start_dev(env=env, api_port=run.api_port, broker_port=run.broker_port)
        run.wait_ready()
        ledger = Ledger(run)
        try:
            screen = run.stdout()
            assert "restoring live state from it" in screen, f"restart {restart}:\n{screen}"
            assert re.search(
                r"^dev +\| restored 3 scopes \(1 with budgets from 1 budget commands\), 2 event ids", screen, re.M
            ), screen  # global, the team and the user
            assert {name: pid for name, pid in killed.items() if alive(pid)} == {}, f"restart {restart}"
            assert ledger.answers() == before, f"restart {restart}"
        finally:
            ledger.http.close()
    assert run.stop(signal.SIGTERM) == 0, run.stdout()
