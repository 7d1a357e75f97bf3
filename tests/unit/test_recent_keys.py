"""The writer's in-memory index of recent keys (``ledger.store.recent_keys``) finds the
same copies as a look-up in the lake: a repeat is dropped, a key the index holds but the
lake does not is stored, and a window older than the index is looked up in the lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.store.records import StoreRows, usage_rows
from ledger.store.schema import open_store
from ledger.store.writer import DEDUP_HORIZON_S_DEFAULT, arrow_table, load_recent_keys
from ledger.store.writer import append as append_rows
from tests.stores import lake_at
from tests.unit.store_rows import entry_table

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
HORIZON = timedelta(seconds=DEDUP_HORIZON_S_DEFAULT)


def usage(event_id: str, received_at: datetime) -> pa.Table:
    value = f'{{"event_id": "{event_id}", "model": "gpt-4o", "usage": {{"prompt_tokens": 3}}}}'.encode()
    received_us = int(received_at.timestamp() * 1_000_000)
    return arrow_table("usage_events", usage_rows(value, 0, 1, len, received_us))


def entry(entry_id: str, occurred_at: datetime) -> pa.Table:
    batch = {
        "batch_id": "b",
        "entries": [
            {"entry_id": entry_id, "event_id": entry_id, "occurred_at": occurred_at.isoformat(), "model": "m",
             "scope_keys": ["global:*"], "cost_nanos": 7, "usage": {"prompt_tokens": 1, "completion_tokens": 0}},
        ],
    }  # fmt: skip
    return entry_table(orjson.dumps(batch))


def append(connection: duckdb.DuckDBPyConnection, recent: Any, usage_events: pa.Table | None = None,
           ledger_entries: pa.Table | None = None) -> None:  # fmt: skip
    rows = StoreRows()
    rows.usage_events, rows.ledger_entries = usage_events, ledger_entries
    append_rows(connection, rows, {}, recent=recent)


def counts(connection: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    found = connection.execute("SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM ledger_entries)")
    return found.fetchone()  # type: ignore[return-value]


def test_a_repeat_within_the_horizon_is_dropped_by_the_index(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    recent = load_recent_keys(connection, NOW, DEDUP_HORIZON_S_DEFAULT)
    append(connection, recent, usage("e1", NOW), entry("e1", NOW))
    assert recent["usage_events"].covers(NOW - HORIZON)
    append(connection, recent, usage("e1", NOW + timedelta(days=2)), entry("e1", NOW))
    append(connection, recent, pa.concat_tables([usage("e2", NOW), usage("e1", NOW)]), entry("e2", NOW))
    assert counts(connection) == (2, 2)
    # one sent again after the horizon is another event, as the worker has it
    append(connection, recent, usage("e1", NOW + HORIZON + timedelta(seconds=1)))
    assert counts(connection) == (3, 2)


def test_the_index_loads_what_the_lake_holds_and_a_key_only_it_holds_is_stored(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    append(connection, None, usage("e1", NOW), entry("e1", NOW))
    recent = load_recent_keys(connection, NOW, DEDUP_HORIZON_S_DEFAULT)
    append(connection, recent, usage("e1", NOW), entry("e1", NOW))
    assert counts(connection) == (1, 1)
    # the index has e2 (as a hash collision would look), the lake does not: e2 is stored
    recent["usage_events"].add(connection, usage("e2", NOW))
    recent["ledger_entries"].add(connection, entry("e2", NOW))
    append(connection, recent, usage("e2", NOW), entry("e2", NOW))
    assert counts(connection) == (2, 2)


def test_a_window_older_than_the_index_is_looked_up_in_the_lake(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    old = NOW - 3 * HORIZON
    append(connection, None, usage("old", old), entry("old", old))
    recent = load_recent_keys(connection, NOW, DEDUP_HORIZON_S_DEFAULT)
    assert not recent["usage_events"].covers(old - HORIZON)
    assert not recent["ledger_entries"].covers(old)
    append(connection, recent, usage("old", old + timedelta(hours=1)), entry("old", old))
    assert counts(connection) == (1, 1)


def test_keys_before_the_index_start_are_forgotten_and_no_longer_covered(tmp_path: Path) -> None:
    connection = open_store(lake_at(tmp_path))
    recent = load_recent_keys(connection, NOW, DEDUP_HORIZON_S_DEFAULT)
    append(connection, recent, usage("e1", NOW), entry("e1", NOW))
    later = NOW + 3 * HORIZON
    for keys in recent.values():
        keys.forget_before(connection, later)
    assert not recent["usage_events"].covers(NOW)
    # the copy is found in the lake
    append(connection, recent, usage("e1", NOW + timedelta(hours=1)), entry("e1", NOW))
    assert counts(connection) == (1, 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(-12, 12)), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_the_index_stores_what_a_look_up_in_the_lake_stores(tmp_path_factory: Any, batches: list[Any]) -> None:
    """Batches of (id, days from now) appended through the index and through the lake alone."""
    with_index = open_store(lake_at(tmp_path_factory.mktemp("index")))
    lake_only = open_store(lake_at(tmp_path_factory.mktemp("lake")))
    recent = load_recent_keys(with_index, NOW, DEDUP_HORIZON_S_DEFAULT)
    for batch in batches:
        events = pa.concat_tables([usage(event_id, NOW + timedelta(days=days)) for event_id, days in batch])
        entries = pa.concat_tables([entry(event_id, NOW + timedelta(days=days)) for event_id, days in batch])
        append(with_index, recent, events, entries)
        append(lake_only, None, events, entries)
    stored = "SELECT event_id, received_at FROM usage_events ORDER BY ALL"
    assert with_index.execute(stored).fetchall() == lake_only.execute(stored).fetchall()
    entries_stored = "SELECT entry_id, occurred_at FROM ledger_entries ORDER BY ALL"
    assert with_index.execute(entries_stored).fetchall() == lake_only.execute(entries_stored).fetchall()
    with_index.close()
    lake_only.close()
