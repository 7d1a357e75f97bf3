"""From topic records to store rows, and appending them: what is stored, what is skipped,
and that appending the same rows again adds nothing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ledger.domain.adjustments import LedgerAdjustment, adjustment_id
from ledger.domain.wire import DeadLetter
from ledger.store.records import StoreRows, dead_letter_row, usage_rows
from ledger.store.schema import open_store
from ledger.store.usage_sql import ledger_entry_rows
from ledger.store.writer import ARROW_SCHEMAS, append, stored_offsets
from tests.stores import lake_at
from tests.unit.store_rows import entry_table

AT = "2025-11-03T09:00:00+00:00"


def words(text: str) -> int:
    return len(text.split())


RECEIVED_US = 1_762_160_400_123_000  # the message's Kafka timestamp, 2025-11-03T09:00:00.123Z


def test_usage_rows_keep_valid_events_with_their_token_counts_and_skip_the_rest() -> None:
    batch = {
        "batch_id": "b1",
        "events": [
            {"event_id": "e1", "occurred_at": AT, "model": "gpt-4o", "user_id": "u", "tags": ["p"],
             "model_group": "team-gpt", "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
            {"event_id": "e2", "model": "gpt-4o", "input_text": "three words here"},
            {"event_id": "e3", "occurred_at": AT, "model": "gpt-4o", "usage": {"prompt_tokens": -1}},
            {"adjustment_id": "adj-1", "event_id": "e1", "occurred_at": AT, "model": "gpt-4o",
             "scope_keys": ["global:*"], "cost_nanos": 5},
            "not an object",
        ],
    }  # fmt: skip
    rows = usage_rows(orjson.dumps(batch), partition=2, offset=40, count_tokens=words, received_at_us=RECEIVED_US)
    assert [row[0] for row in rows] == ["e1", "e2"]  # invalid, adjustment and non-object skipped
    e1, e2 = rows
    assert e1[8:11] == (["p"], ["global:*", "user:u", "tag:p"], 10)
    assert (e1[15], e1[16], e1[18]) == (True, False, None)
    assert (e2[10], e2[11], e2[15], e2[16]) == (3, 0, False, True)  # counted from its text
    assert (e1[-5], e1[-4], e1[-3], e1[-2], e1[-1]) == (2, 40, RECEIVED_US, "event", "team-gpt")
    assert (e2[1], e2[-3], e2[-2], e2[-1]) == (
        RECEIVED_US,
        RECEIVED_US,
        "received",
        None,
    )  # no time of its own: the record's


def test_a_dead_letter_has_the_same_id_each_time_the_worker_writes_it() -> None:
    letter = DeadLetter(
        source_topic="usage",
        source_partition=1,
        source_offset=7,
        original_value_b64=base64.b64encode(b"{").decode(),
        stage="decode",
        reason="malformed_json",
        detail="not JSON",
    )
    first = dead_letter_row(letter.model_dump_json().encode())
    again = dead_letter_row(letter.model_dump_json().encode())
    other = dead_letter_row(letter.model_copy(update={"source_offset": 8}).model_dump_json().encode())
    ids = [row[0] for row in (first, again, other) if row is not None]
    assert len(ids) == 3
    assert ids[0] == ids[1] != ids[2]
    assert dead_letter_row(b"garbage") is None


def test_appending_the_same_rows_twice_stores_them_once_and_moves_the_offsets(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    entries = {
        "batch_id": "usage/0/1",
        "entries": [
            {"entry_id": "e1", "event_id": "e1", "occurred_at": AT, "model": "gpt-4o", "scope_keys": ["global:*"],
             "cost_nanos": 12, "cost_source": "price_book", "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        ],
    }  # fmt: skip
    rows = StoreRows()
    rows.ledger_entries = entry_table(orjson.dumps(entries))
    append(connection, rows, {("ledger-entries", 0): 5})
    append(connection, rows, {("ledger-entries", 0): 6})
    assert connection.execute("SELECT count(*), sum(cost_nanos) FROM ledger_entries").fetchone() == (1, 12)
    assert stored_offsets(connection) == {("ledger-entries", 0): 6}


def test_an_adjustment_id_names_the_correction_it_makes() -> None:
    first = adjustment_id("e1", 100, 150, "sha256:book")
    assert first == adjustment_id("e1", 100, 150, "sha256:book")
    assert first != adjustment_id("e1", 150, 150 + 50, "sha256:book")
    adjustment = LedgerAdjustment(
        adjustment_id=first,
        event_id="e1",
        occurred_at=datetime(2025, 11, 3, tzinfo=UTC),
        model="gpt-4o",
        scope_keys=("global:*", "team:t"),
        cost_nanos=-50,
    )
    assert adjustment.cost_nanos == -50


def test_an_entries_record_the_worker_did_not_write_is_refused_or_its_bad_entries_dropped(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    good = {"entry_id": "ok", "event_id": "ok", "occurred_at": AT, "model": "m", "scope_keys": ["global:*"],
            "cost_nanos": 5, "cost_source": "price_book", "usage": {}}  # fmt: skip
    bad = [
        {**good, "entry_id": "no-time", "occurred_at": "yesterday"},
        {**good, "entry_id": "no-cost", "cost_nanos": "x"},
    ]
    rows = StoreRows()
    batch = orjson.dumps({"batch_id": "b", "entries": [good, *bad]})
    rows.ledger_entries, refused = ledger_entry_rows(connection, [batch])
    assert refused == []
    append(connection, rows, {})
    assert connection.execute("SELECT entry_id FROM ledger_entries").fetchall() == [("ok",)]
    not_batches = [b"[1, 2]", b'{"entries": 3}', b"{truncated", b'"entries"', b"\xff{}", b""]
    unpacked, refused = ledger_entry_rows(connection, [*not_batches, batch, b'{"entries": []}'])
    assert refused == list(range(len(not_batches)))
    assert unpacked.column("entry_id").to_pylist() == ["ok"]


def test_each_arrow_schema_names_its_tables_columns_in_order(tmp_path: Path) -> None:
    """The writer's Arrow schemas (rows go in as ``SELECT *``) match the lake's tables."""
    connection = open_store(lake_at(tmp_path))
    for table, schema in ARROW_SCHEMAS.items():
        columns = [row[0] for row in connection.execute(f"DESCRIBE {table}").fetchall()]
        assert columns == schema.names, table
