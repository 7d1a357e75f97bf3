"""Restore, without a broker: the fold puts a restored state in place idempotently, and the
plan computed from a store is live's own state (what the ledger charged, adjustments
counted, every crossing already alerted kept), with the dedup ids, rate limits and open
holds a live side would hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ledger.domain.adjustments import LedgerAdjustment, adjustment_entry
from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.events import UsageEvent
from ledger.domain.fold import Charge, apply_command
from ledger.domain.pricing import LedgerEntry, LedgerEntryBatch, price_event
from ledger.domain.snapshots import RESTORE_SOURCE, ScopeInput, empty_snapshot, fold_inputs
from ledger.pricebooks.genai import genai_prices_book
from ledger.restore.plan import RestorePlan, plan_restore, store_has_history
from ledger.settings import Settings
from ledger.store.records import StoreRows, alert_row, command_row, rate_limit_row, usage_rows
from ledger.store.schema import open_store
from ledger.store.writer import append
from tests.stores import lake_at
from tests.unit.store_rows import entry_table

NOW = datetime.now(UTC).replace(microsecond=0)
SPEC = BudgetSpec(duration="1d", max_budget_nanos=1_000, soft_budget_nanos=500)


def _limited(scope: str = "team:a"):  # type: ignore[no-untyped-def]
    command = BudgetCommand(command_id="c1", scope_key=scope, action="upsert", issued_at=NOW, budgets=(SPEC,))
    return apply_command(empty_snapshot(scope).state, command)[0]


def _with(model, changes):  # type: ignore[no-untyped-def]
    """A frozen model with ``changes`` (the fold's states refuse ``model_copy``)."""
    return type(model).model_validate({**dict(model), **changes})


def _charge(entry_id: str, cost: int) -> Charge:
    return Charge(entry_id, NOW, "gpt-4o", cost)


# -- the fold --------------------------------------------------------------------------


def test_a_restore_puts_its_state_in_place_once_and_a_later_one_replaces_it() -> None:
    before = fold_inputs(empty_snapshot("team:a"), [ScopeInput("u0", 4, charges=(_charge("x", 7),))])[0]
    restored = _with(_limited(), {"total_spend_nanos": 900})
    after, alerts = fold_inputs(before, [ScopeInput(RESTORE_SOURCE, 100, restore=restored)])
    assert (after.state, alerts) == (restored, ())
    assert after.applied == {"u0": 4, RESTORE_SOURCE: 100}  # positions of the live log are kept

    again, _ = fold_inputs(after, [ScopeInput(RESTORE_SOURCE, 100, restore=_limited())])
    assert again is after  # the same restore delivered twice changes nothing
    older, _ = fold_inputs(after, [ScopeInput(RESTORE_SOURCE, 99, restore=_limited())])
    assert older is after
    later, _ = fold_inputs(after, [ScopeInput(RESTORE_SOURCE, 101, restore=_limited())])
    assert later.state == _limited()


def test_charges_after_a_restore_add_to_it_and_crossings_it_alerted_are_not_sent_again() -> None:
    state = _limited()
    limit = _with(state.limits[0], {"spend_nanos": 1_200, "alerted": (("soft-threshold", 500),)})
    restored = _with(state, {"limits": (limit,), "total_spend_nanos": 1_200})
    inputs = [
        ScopeInput("u1", 0, charges=(_charge("before-restore", 5),)),  # replaced by the restore
        ScopeInput(RESTORE_SOURCE, 1, restore=restored),
        ScopeInput("u1", 1, charges=(_charge("after", 10),)),
    ]
    after, alerts = fold_inputs(empty_snapshot("team:a"), inputs)
    assert after.state.total_spend_nanos == 1_210
    assert after.state.limits[0].spend_nanos == 1_210
    assert [(alert.kind, alert.threshold_nanos) for alert in alerts] == [("exceeded", 1_000)]


def test_a_restore_of_another_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="team:b"):
        fold_inputs(empty_snapshot("team:a"), [ScopeInput(RESTORE_SOURCE, 1, restore=_limited("team:b"))])


# -- the plan --------------------------------------------------------------------------


def _usage(event_id: str, occurred_at: datetime, prompt: int = 100_000) -> UsageEvent:
    return UsageEvent.model_validate(
        {
            "event_id": event_id,
            "occurred_at": occurred_at.isoformat(),
            "model": "gpt-4o",
            "provider": "openai",
            "team_id": "a",
            "usage": {"prompt_tokens": prompt, "completion_tokens": 0},
        }
    )


def _store(
    path: Path, events: list[UsageEvent], entries: list[LedgerEntry], rows: StoreRows, received: dict[str, datetime]
) -> None:
    for offset, event in enumerate(events):
        at = received.get(event.event_id)
        received_us = None if at is None else int(at.timestamp() * 1_000_000)
        rows.tables["usage_events"].extend(usage_rows(event.model_dump_json().encode(), 0, offset, len, received_us))
    rows.ledger_entries = entry_table(LedgerEntryBatch.encode("batch-1", entries))
    connection = open_store(path)
    try:
        append(connection, rows, {})
    finally:
        connection.close()


def test_the_plan_is_what_live_held(tmp_path: Path) -> None:
    book = genai_prices_book()
    issued = NOW - timedelta(days=9, hours=1)
    window_start = issued + timedelta(days=9)  # 1d windows from the command's time: the last began an hour ago
    events = [_usage(f"e{n}", NOW - timedelta(minutes=n)) for n in range(3)]  # $0.25 each
    old = _usage("old", NOW - timedelta(days=8))  # before the window and the dedup horizon
    late = _usage("late", NOW - timedelta(days=8))  # occurred as long ago, but published an hour ago
    entries = [price_event(event, book) for event in [*events, old, late]]
    refund = LedgerAdjustment(
        adjustment_id="adj-1",
        event_id="e0",
        occurred_at=events[0].occurred_at,
        model="gpt-4o",
        scope_keys=("global:*", "team:a"),
        cost_nanos=-200_000_000,
    )
    entries.append(adjustment_entry(refund))
    spec = BudgetSpec(duration="1d", max_budget_nanos=600_000_000, soft_budget_nanos=300_000_000)
    command = BudgetCommand(command_id="c1", scope_key="team:a", action="upsert", issued_at=issued, budgets=(spec,))
    rows = StoreRows()
    rows.tables["budget_commands"].append(command_row(command.model_dump_json().encode(), 0, 0))
    # Live crossed $0.60 before the refund (0.75 > 0.60), then the refund took it back to 0.55.
    for kind, threshold in (("soft-threshold", 300_000_000), ("exceeded", 600_000_000), ("recovered", 600_000_000)):
        alert = {
            "alert_id": f"alert-{kind}",
            "scope_key": "team:a",
            "limit_name": spec.limit_name,
            "kind": kind,
            "window_start": window_start.isoformat(),
            "window_end": (window_start + timedelta(days=1)).isoformat(),
            "spend_nanos": 750_000_000,
            "threshold_nanos": threshold,
            "occurred_at": NOW.isoformat(),
            "trigger_id": "e2",
            "message": "m",
        }
        rows.tables["budget_alerts"].append(alert_row(orjson.dumps(alert)))
    limit = {"schema_version": 1, "record_id": "r1", "issued_at": NOW.isoformat(), "kind": "model", "model": "gpt-4o"}
    rows.tables["rate_limit_records"].append(rate_limit_row(orjson.dumps({**limit, "tpm": 1_000}), 0, 0))
    rows.tables["rate_limit_records"].append(rate_limit_row(orjson.dumps({**limit, "record_id": "r2", "tpm": 9}), 0, 1))
    path = lake_at(tmp_path)
    _store(path, [*events, old, late], entries, rows, {"late": NOW - timedelta(hours=1)})

    connection = open_store(path, read_only=True)
    try:
        assert store_has_history(connection)
        plan = plan_restore(connection, Settings(), lambda: book)
    finally:
        connection.close()

    team = plan.states["team:a"]
    assert team.total_spend_nanos == sum(entry.cost_nanos for entry in entries)
    assert team.entry_count == 6  # five events and the adjustment, as live counts them
    (limit_state,) = team.limits
    assert limit_state.spend_nanos == 550_000_000  # what was charged in today's window, refund included
    assert limit_state.window_start == window_start
    assert set(limit_state.alerted) == {
        ("soft-threshold", 300_000_000),
        ("exceeded", 600_000_000),
        ("recovered", 600_000_000),
    }
    # Seen within the horizon, oldest first: the late one by when it reached the log.
    assert [event_id for event_id, _ in plan.event_ids] == ["late", "e2", "e1", "adj-1", "e0"]
    assert plan.event_ids[0][1] == (NOW - timedelta(hours=1)).timestamp()
    assert all(seen <= NOW.timestamp() + 1 for _, seen in plan.event_ids)
    assert plan.commands == 1
    assert plan.price_book is None  # none was published: the bundled book stays
    assert [orjson.loads(value)["tpm"] for _, value in plan.rate_limits] == [9]  # the last per key


def test_an_empty_store_has_nothing_to_restore(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    try:
        assert not store_has_history(connection)
    finally:
        connection.close()


def test_restored_ids_go_to_the_partition_that_dedups_them_in_records_under_the_size_limit() -> None:
    from streams.codec import decode_restored_ids, partition_of
    from streams.restore import IDS_BYTES_MAX, _id_messages

    # 2 bytes per é in UTF-8; a quote or backslash is 2 bytes in JSON
    ids = [(f"évènement-{n:06d}-" + "x" * 100, 1_000.0 + n) for n in range(40_000)]
    ids += [(f"quoted-{n:06d}-" + '"\\' * 90, 50_000.0 + n) for n in range(20_000)]
    plan = RestorePlan(stamp=7, as_of=NOW, states={}, commands=0, events=0, event_ids=ids, price_book=None)
    records = _id_messages(plan, 4)
    seen = dict(ids)
    placed: dict[str, int] = {}
    for partition, value in records:
        assert len(value) <= IDS_BYTES_MAX + 100
        decoded = decode_restored_ids(value)
        assert decoded is not None
        chunk, seen_at = decoded
        assert seen_at == max(seen[event_id] for event_id in chunk)  # kept at least as long
        placed.update(dict.fromkeys(chunk, partition))
    assert len(records) > 4  # the limit split them
    assert placed == {event_id: partition_of(event_id.encode(), 4) for event_id, _ in ids}
