"""``spend-ledger restore`` against the real broker, worker and store: a ledger whose log
is gone (here: a new topic prefix, empty topics) gets every scope's state back exactly,
its alerted crossings included, charges a retried event once, carries on to equal the
replay, and a second restore changes nothing (DESIGN section 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ledger.domain.snapshots import RESTORE_SOURCE, BudgetSnapshot
from ledger.kafka import records_on
from ledger.processes import ChildProcess
from tests.integration.builders import MakeLedger, charged, command, cost_nanos, has_limits, usage
from tests.integration.conftest import Ledger
from tests.stores import lake_at, store_env

pytestmark = pytest.mark.timeout(300)


def run_cli(arguments: list[str], env: dict[str, str], log: Path, expect: int = 0) -> str:
    process = ChildProcess.command(arguments, env, log).start()
    assert process.wait(timeout_s=120) == expect, log.read_text()
    return log.read_text()


def _states(snapshots: dict[str, BudgetSnapshot]) -> dict[str, object]:
    """What must come back: each scope's state, crossings as a set (their order is the
    order they happened in, which the store keeps only to the alert's time)."""
    found = {}
    for scope, snapshot in snapshots.items():
        state = snapshot.state
        limits = [(limit.model_dump(exclude={"alerted"}), frozenset(limit.alerted)) for limit in state.limits]
        found[scope] = (state.model_dump(exclude={"limits"}), limits)
    return found


def _latest(ledger: Ledger) -> dict[str, BudgetSnapshot]:
    """The last snapshot per scope on ``budget-state``, read to its end."""
    records = ledger.read(ledger.topics.budget_state)
    return {r.key.decode(): BudgetSnapshot.model_validate_json(r.value) for r in records if r.value}


def test_restore_brings_every_scope_back_and_the_worker_carries_on(make_ledger: MakeLedger, tmp_path: Path) -> None:
    store = lake_at(tmp_path)
    old = make_ledger()
    old.start_worker()
    daily = {"duration": "1d", "max_budget_nanos": 2_000_000, "soft_budget_nanos": 1_000_000}
    monthly = {"name": "monthly", "duration": "monthly", "max_budget_nanos": 900_000_000}
    old.publish_json(old.topics.budget_commands, [command("team:t", budgets=[daily, monthly], alias="Team T")])
    old.snapshots(has_limits("team:t"))
    events = [usage(f"e-{n}", user=f"u{n % 4}", team="t", prompt=2_000 + n, key_id="k1") for n in range(30)]
    unpriced = [usage("e-unpriced", user="u0", team="t", model="acme-private-9b")]
    old.publish_json(old.topics.usage, [(e["event_id"], e) for e in events + unpriced])
    before = old.snapshots(charged("team:t", 30))
    old.wait_idle()
    assert {kind for kind, _ in before["team:t"].state.limits[0].alerted} == {"soft-threshold", "exceeded"}
    old.project(store)
    old.stop_all()
    before = _latest(old)
    assert len(before) == 7  # global, the team, four users and the key

    new = make_ledger()  # the same store, an empty log
    env = {**new.env, **store_env(store)}
    dry = run_cli(["restore", "--dry-run"], env, tmp_path / "dry.log")
    assert "would restore 7 scopes (1 with budgets from 1 budget commands), 31 event ids" in dry, dry
    past = run_cli(["restore", "--dry-run", "--as-of", "2020-01-01"], env, tmp_path / "past.log")
    assert "would restore 0 scopes (0 with budgets from 0 budget commands), 0 event ids" in past, past
    names = new.topics.all()
    assert asyncio.run(records_on(new.settings, names)) == 0  # a dry run publishes nothing
    output = run_cli(["restore"], env, tmp_path / "restore.log")
    assert "restored 7 scopes" in output, output

    new.start_worker()
    restored = new.snapshots(lambda snapshots: len(snapshots) == len(before))
    assert _states(restored) == _states(before)
    assert all(snapshot.applied.keys() == {RESTORE_SOURCE} for snapshot in restored.values())

    refused = run_cli(["restore"], env, tmp_path / "refused.log", expect=2)
    assert "the broker already holds" in refused
    assert "--force" in refused
    run_cli(["restore", "--force"], env, tmp_path / "again.log")  # restoring twice changes nothing
    again = new.snapshots(
        lambda snapshots: (
            len(snapshots) == len(before)
            and all(s.applied[RESTORE_SOURCE] > restored[k].applied[RESTORE_SOURCE] for k, s in snapshots.items())
        )
    )
    assert _states(again) == _states(before)

    retried, fresh = events[0], usage("e-after", user="u1", team="t", prompt=3_000, key_id="k1")
    new.publish_json(new.topics.usage, [(retried["event_id"], retried)])
    new.publish_json(new.topics.usage, [(fresh["event_id"], fresh)])
    total = before["team:t"].state.total_spend_nanos + cost_nanos(fresh)
    after = new.snapshots(lambda s: "team:t" in s and s["team:t"].state.total_spend_nanos == total)
    assert after["global:*"].state.total_spend_nanos == before["global:*"].state.total_spend_nanos + cost_nanos(fresh)
    new.wait_idle()
    alerts = new.read_json(new.topics.budget_alerts)
    assert [alert for alert in alerts if alert["kind"] in ("exceeded", "soft-threshold")] == []
    _, differences = new.replay_equality(store)
    assert differences == []
