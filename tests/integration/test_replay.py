"""Replay against the real broker, worker and store: live equals the replay, a changed
price applied with --apply makes live equal the new replay, a second --apply does nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from ledger.domain.events import UsageEvent
from ledger.domain.prices import PriceBook, PriceOverride, TokenRates
from ledger.domain.pricing import price_event
from ledger.processes import ChildProcess
from ledger.replay.service import check_equality
from ledger.store.schema import open_store
from tests.integration.builders import MakeLedger, charged, command, cost_nanos, has_limits, usage
from tests.stores import lake_at, store_env

NEGOTIATED = PriceBook(
    book_id="negotiated",
    source="test: a negotiated rate, and a price for a private model",
    overrides=(
        PriceOverride(model="gpt-4o-mini", rates=TokenRates(input_mtok=Decimal("1.5"), output_mtok=Decimal(6))),
        PriceOverride(model="acme-private-9b", rates=TokenRates(input_mtok=Decimal(1), output_mtok=Decimal(2))),
    ),
)


def run_cli(arguments: list[str], env: dict[str, str], log: Path) -> str:
    process = ChildProcess.command(arguments, env, log).start()
    assert process.wait(timeout_s=120) == 0, log.read_text()
    return log.read_text()


def test_apply_makes_live_equal_the_replay_under_a_new_book_and_applying_twice_changes_nothing(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    budget = {"duration": "1d", "max_budget_nanos": 5_000_000, "soft_budget_nanos": 4_000_000}
    ledger.publish_json(ledger.topics.budget_commands, [command("team:r", budgets=[budget])])
    ledger.snapshots(has_limits("team:r"))
    events = [usage(f"r-{n}", user=f"u{n % 3}", team="r", prompt=1_000 + n) for n in range(20)]
    private = [usage(f"p-{n}", user="u0", team="r", model="acme-private-9b", prompt=500) for n in range(3)]
    ledger.publish_json(ledger.topics.usage, [(e["event_id"], e) for e in events + private])
    ledger.snapshots(charged("team:r", 20))
    ledger.wait_idle()
    store = lake_at(tmp_path)
    result, differences = ledger.replay_equality(store)
    assert differences == []
    assert (result.charged, result.unpriced) == (20, 3)
    old_total = sum(cost_nanos(e) for e in events)
    assert result.states["team:r"].total_spend_nanos == old_total
    assert result.states["team:r"].limits[0].alerted == ()  # under 0.004 USD: no crossing yet

    ledger.publish(ledger.topics.prices, [(b"negotiated", NEGOTIATED.model_dump_json().encode())])
    ledger.project(store)  # the store must have read everything before an apply
    env = {**ledger.env, **store_env(store)}
    output = run_cli(["replay", "--apply"], env, tmp_path / "replay-1.log")
    assert "published 23 adjustments" in output

    new_costs = [price_event(UsageEvent.model_validate(e), NEGOTIATED).cost_nanos for e in events + private]
    new_total = sum(new_costs)
    states = ledger.snapshots(lambda s: "team:r" in s and s["team:r"].state.total_spend_nanos == new_total)
    limit = states["team:r"].state.limits[0]
    assert limit.spend_nanos == new_total
    assert {kind for kind, _ in limit.alerted} == {"soft-threshold", "exceeded"}
    ledger.wait_idle()
    ledger.project(store)

    connection = open_store(store, read_only=True)
    try:
        result, differences = asyncio.run(check_equality(ledger.settings, connection, NEGOTIATED))
        adjustments = connection.execute(
            "SELECT count(*), sum(cost_nanos) FROM ledger_entries WHERE kind = 'adjustment'"
        ).fetchone()
    finally:
        connection.close()
    assert differences == []
    assert adjustments == (23, new_total - old_total)
    alerts = ledger.read_json(ledger.topics.budget_alerts)
    assert sorted(a["kind"] for a in alerts if a["scope_key"] == "team:r") == ["exceeded", "soft-threshold"]

    output = run_cli(["replay", "--apply"], env, tmp_path / "replay-2.log")
    assert "live state equals the replay" in output
    assert "nothing to apply" in output
