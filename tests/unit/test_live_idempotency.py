"""The pure parts the worker relies on for at-least-once delivery: the dedup index, the
per-source positions of budget snapshots, and the internal record formats."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.dedup import DedupIndex
from ledger.domain.fold import Charge
from ledger.domain.snapshots import ScopeInput, empty_snapshot, fold_inputs, fold_tick, next_window_end
from ledger.publishing import usage_messages
from streams.codec import (
    Source,
    charge_row,
    decode_routed,
    decode_scope_record,
    encode_charges,
    encode_routed,
    partition_of,
)
from streams.faust_kafka import CommitGuard

T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)


def test_a_repeated_event_id_is_new_only_in_the_message_that_first_carried_it() -> None:
    index = DedupIndex()
    assert index.admit(5, ["a", "b", "a"]) == [True, True, False]
    assert index.record(5, ["a", "b"], seen_at_s=100.0)
    assert index.admit(9, ["a", "c"]) == [False, True]
    # The message at offset 5 delivered again: its events are rebuilt, not dropped.
    assert index.admit(5, ["a", "b"]) == [True, True]
    assert not index.record(5, ["a", "b"], seen_at_s=200.0)


def test_dedup_forgets_messages_past_the_horizon() -> None:
    index = DedupIndex()
    index.record(1, ["old"], seen_at_s=0.0)
    index.record(2, ["new"], seen_at_s=1_000.0)
    assert index.expire(now_s=1_500.0, horizon_s=1_000.0) == [1]
    assert index.admit(3, ["old", "new"]) == [True, False]
    assert len(index) == 1


def charge(entry_id: str, cost_nanos: int, at: datetime = T0) -> Charge:
    return Charge(entry_id, at, "gpt-4o", cost_nanos)


def test_input_folded_twice_counts_once() -> None:
    first = ScopeInput("u0", 10, charges=(charge("e1", 5), charge("e2", 7)))
    second = ScopeInput("u1", 3, charges=(charge("e3", 11),))
    once, _ = fold_inputs(empty_snapshot("team:a"), [first, second])
    again, alerts = fold_inputs(once, [first, second])
    assert again is once
    assert alerts == ()
    assert once.state.total_spend_nanos == 23
    assert once.applied == {"u0": 10, "u1": 3}


@given(st.lists(st.integers(min_value=0, max_value=1_000), min_size=1, max_size=30), st.data())
def test_any_redelivery_of_a_prefix_leaves_the_state_as_one_delivery(costs: list[int], data: st.DataObject) -> None:
    inputs = [ScopeInput("u0", offset, charges=(charge(f"e{offset}", cost),)) for offset, cost in enumerate(costs)]
    replayed_from = data.draw(st.integers(min_value=0, max_value=len(inputs)))
    split = data.draw(st.integers(min_value=replayed_from, max_value=len(inputs)))
    once, _ = fold_inputs(empty_snapshot("user:x"), inputs)
    partial, _ = fold_inputs(empty_snapshot("user:x"), inputs[:split])
    redelivered, _ = fold_inputs(partial, inputs[replayed_from:])
    assert redelivered.state == once.state
    assert redelivered.state.total_spend_nanos == sum(costs)


def test_commands_and_charges_fold_in_order_and_the_timer_rolls_windows() -> None:
    upsert = BudgetCommand(
        command_id="c1",
        scope_key="team:a",
        action="upsert",
        issued_at=T0,
        budgets=(BudgetSpec(max_budget_nanos=10, duration="1m"),),
    )
    snapshot, alerts = fold_inputs(
        empty_snapshot("team:a"),
        [
            ScopeInput("c0", 0, command=upsert),
            ScopeInput("u0", 0, charges=(charge("e1", 11, T0 + timedelta(seconds=1)),)),
        ],
    )
    assert [alert.kind for alert in alerts] == ["exceeded"]
    assert next_window_end(snapshot) == T0 + timedelta(minutes=1)
    unchanged, none = fold_tick(snapshot, T0 + timedelta(seconds=30))
    assert unchanged is snapshot
    assert none == ()
    rolled, alerts = fold_tick(snapshot, T0 + timedelta(minutes=1, seconds=1))
    assert [alert.kind for alert in alerts] == ["reset", "recovered"]
    assert rolled.state.limits[0].spend_nanos == 0
    assert rolled.applied == snapshot.applied


def test_routed_records_keep_each_event_and_its_source_byte_for_byte() -> None:
    sources = [Source("p.usage", 3, 17, b"k", 1_762_160_400_123), Source("p.usage", 1, 2, None)]
    events = [(0, b'{"event_id": "a"}'), (1, b'{"event_id":"b",\n "x": 1}'), (0, b"{}")]
    assert decode_routed(encode_routed(sources, events)) == (sources, events)
    # A record routed by a worker before record times were carried still reads, with none.
    header = b'[["p.usage",3,17,"6b"]]'
    older = struct.pack(">II", 1, len(header)) + header + struct.pack(">II", 0, 2) + b"{}"
    assert decode_routed(older) == ([Source("p.usage", 3, 17, b"k", None)], [(0, b"{}")])


def test_charge_records_group_by_scope() -> None:
    rows = [
        charge_row(charge("e1", 5), T0.isoformat(), ["team:a", "user:u"]),
        charge_row(charge("e2", 6), T0.isoformat(), ["team:a"]),
    ]
    record = decode_scope_record(encode_charges("u2", 40, rows))
    assert (record.source, record.offset, record.command) == ("u2", 40, None)
    assert record.charges == {"team:a": [charge("e1", 5), charge("e2", 6)], "user:u": [charge("e1", 5)]}


def test_partition_of_is_stable_and_in_range() -> None:
    assert partition_of(b"team:ml", 8) == partition_of(b"team:ml", 8)
    assert {partition_of(f"user:{n}".encode(), 8) for n in range(200)} == set(range(8))


def test_our_producers_batch_events_and_send_a_lone_event_plain() -> None:
    events = [{"event_id": f"e{n}", "model": "m"} for n in range(5)]
    messages = list(usage_messages(events, batch_events_max=2))
    assert len(messages) == 3
    first = orjson.loads(messages[0][1])
    assert messages[0][0] == first["batch_id"].encode()
    assert [event["event_id"] for event in first["events"]] == ["e0", "e1"]
    assert messages[2] == (b"e4", orjson.dumps(events[4]))
    assert next(iter(usage_messages(events[:2], 2)))[0] == messages[0][0]  # same events, same batch id


def test_commits_follow_finished_steps_not_faust_acks() -> None:
    guard = CommitGuard({"usage"})
    assert guard.commit_offset("usage", 0, 15) is None  # acked by Faust, processed by nobody yet
    guard.finished("usage", 0, 9)
    assert guard.commit_offset("usage", 0, 15) == 10
    assert guard.commit_offset("usage", 0, 7) == 10  # read directly by the gap filler, never acked by Faust
    assert guard.commit_offset("usage", 0, None) == 10
    assert guard.partitions() == [("usage", 0)]
    assert guard.commit_offset("other", 0, 15) == 15  # not an input of ours
    guard.reset()  # a rebalance: the consumer seeks back to the committed offset
    assert guard.commit_offset("usage", 0, 15) is None
    assert guard.partitions() == []
