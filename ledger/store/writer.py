"""Appending rows to the store: every table and the consumer offsets in one transaction
(one lake snapshot), so a reader sees a batch whole or not at all.

Rows go in as Arrow tables (one insert per table per batch, never row by row). A lake
table has no primary key, so the writer keeps each table's key (``TABLE_KEYS``) unique:
within a batch the first copy wins, and a row whose key the table holds already is
dropped. The look-up reads only the files that can hold a copy (``_DEDUP_WINDOWS``): a
copy of a record carries the record's own time (the same ledger entry, alert, admission
or command sent again), except a usage event sent again by its client, which counts as a
copy within the dedup horizon, as the worker's dedup has it. Input read again after a
crash therefore adds nothing; with the offsets committed alongside, it is not even read
again unless the crash came before the commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger.store.recent_keys import BACKLOG_COVERED, RecentKeys
from ledger.store.records import TABLE_COLUMNS, StoreRows
from ledger.store.schema import TABLE_KEYS

_UTC = pa.timestamp("us", tz="UTC")
_TEXTS = pa.list_(pa.string())
ARROW_SCHEMAS: dict[str, pa.Schema] = {
    "usage_events": pa.schema(
        [
            ("event_id", pa.string()),
            ("occurred_at", _UTC),
            ("model", pa.string()),
            ("provider", pa.string()),
            ("user_id", pa.string()),
            ("team_id", pa.string()),
            ("key_id", pa.string()),
            ("end_user", pa.string()),
            ("tags", _TEXTS),
            ("scope_keys", _TEXTS),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cache_read_tokens", pa.int64()),
            ("cache_write_tokens", pa.int64()),
            ("reasoning_tokens", pa.int64()),
            ("has_usage", pa.bool_()),
            ("tokens_estimated", pa.bool_()),
            ("reported_cost_nanos", pa.int64()),
            ("metadata", pa.string()),
            ("source_partition", pa.int32()),
            ("source_offset", pa.int64()),
            ("received_at", _UTC),
            ("occurred_at_source", pa.string()),
            ("model_group", pa.string()),
        ]
    ),
    "ledger_entries": pa.schema(
        [
            ("entry_id", pa.string()),
            ("event_id", pa.string()),
            ("kind", pa.string()),
            ("occurred_at", _UTC),
            ("model", pa.string()),
            ("provider", pa.string()),
            ("priced_as", pa.string()),
            ("scope_keys", _TEXTS),
            ("cost_nanos", pa.int64()),
            ("cost_source", pa.string()),
            ("price_book_version", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("tokens_estimated", pa.bool_()),
            ("batch_id", pa.string()),
        ]
    ),
    "budget_commands": pa.schema(
        [
            ("command_id", pa.string()),
            ("scope_key", pa.string()),
            ("action", pa.string()),
            ("issued_at", _UTC),
            ("alias", pa.string()),
            ("limit_name", pa.string()),
            ("command", pa.string()),
            ("source_partition", pa.int32()),
            ("source_offset", pa.int64()),
        ]
    ),
    "budget_alerts": pa.schema(
        [
            ("alert_id", pa.string()),
            ("scope_key", pa.string()),
            ("alias", pa.string()),
            ("limit_name", pa.string()),
            ("kind", pa.string()),
            ("window_start", _UTC),
            ("window_end", _UTC),
            ("spend_nanos", pa.int64()),
            ("max_budget_nanos", pa.int64()),
            ("soft_budget_nanos", pa.int64()),
            ("threshold_nanos", pa.int64()),
            ("occurred_at", _UTC),
            ("trigger_id", pa.string()),
            ("message", pa.string()),
        ]
    ),
    "price_books": pa.schema(
        [
            ("version", pa.string()),
            ("book_id", pa.string()),
            ("source", pa.string()),
            ("book", pa.string()),
            ("source_offset", pa.int64()),
        ]
    ),
    "dead_letters": pa.schema(
        [
            ("dead_letter_id", pa.string()),
            ("source_topic", pa.string()),
            ("source_partition", pa.int32()),
            ("source_offset", pa.int64()),
            ("stage", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("event_id", pa.string()),
            ("original_key_b64", pa.string()),
            ("original_value_b64", pa.string()),
        ]
    ),
    "admission_events": pa.schema(
        [
            ("request_id", pa.string()),
            ("state", pa.string()),
            ("event_at", _UTC),
            ("instance_id", pa.string()),
            ("scope_keys", _TEXTS),
            ("model", pa.string()),
            ("rate_key", pa.string()),
            ("priority", pa.string()),
            ("estimate_nanos", pa.int64()),
            ("estimated_tokens", pa.int64()),
            ("expires_at", _UTC),
            ("cost_nanos", pa.int64()),
            ("tokens", pa.int64()),
            ("event", pa.string()),
        ]
    ),
    "rate_limit_records": pa.schema(
        [
            ("record_id", pa.string()),
            ("topic_key", pa.string()),
            ("kind", pa.string()),
            ("issued_at", _UTC),
            ("record", pa.string()),
            ("source_partition", pa.int32()),
            ("source_offset", pa.int64()),
        ]
    ),
}
assert all(tuple(ARROW_SCHEMAS[name].names) == columns for name, columns in TABLE_COLUMNS.items())


# Where a copy of a row can be, by table: rows whose time column is within the batch's
# own times ("same": a copy carries the record's time), or within the dedup horizon
# before them ("horizon"). Not named: the whole table (small tables).
_DEDUP_WINDOWS: dict[str, tuple[str, Literal["same", "horizon"]]] = {
    "usage_events": ("received_at", "horizon"),
    "ledger_entries": ("occurred_at", "same"),
    "budget_commands": ("issued_at", "same"),
    "budget_alerts": ("occurred_at", "same"),
    "admission_events": ("event_at", "same"),
}
DEDUP_HORIZON_S_DEFAULT = 7 * 86_400
# The tables whose look-ups read the most, given an index of recent keys (``recent_keys``).
INDEXED_TABLES = ("usage_events", "ledger_entries")


def load_recent_keys(
    connection: duckdb.DuckDBPyConnection, now: datetime, dedup_horizon_s: int
) -> dict[str, RecentKeys]:
    """The recent keys of ``INDEXED_TABLES``, read from the lake: those whose time is at
    most the horizon and ``BACKLOG_COVERED`` before ``now``."""
    since = now - timedelta(seconds=dedup_horizon_s) - BACKLOG_COVERED
    recent = {}
    for table in INDEXED_TABLES:
        (key,) = TABLE_KEYS[table]
        recent[table] = RecentKeys(table, key, _DEDUP_WINDOWS[table][0], since)
        recent[table].load(connection)
    return recent


def arrow_table(table: str, rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows (tuples in column order) as an Arrow table of the table's schema."""
    schema = ARROW_SCHEMAS[table]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
    return pa.Table.from_arrays(
        [pa.array(column, type=schema.field(i).type) for i, column in enumerate(columns)], schema=schema
    )


@dataclass(frozen=True, slots=True)
class StoredPosition:
    """Where the store is in one input partition (a ``consumer_offsets`` row)."""

    next_offset: int  # on the broker's current log
    offset_base: int  # added to that log's offsets in stored source_offsets
    last_record: str | None  # fingerprint of the record at next_offset - 1 (None: unknown)


def stored_positions(connection: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], StoredPosition]:
    """Every stored position per (topic, partition), as last committed."""
    rows = connection.execute(
        "SELECT topic, kafka_partition, next_offset, offset_base, last_record FROM consumer_offsets"
    ).fetchall()
    return {(topic, partition): StoredPosition(*position) for topic, partition, *position in rows}


def stored_offsets(connection: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition), as last committed."""
    rows = connection.execute("SELECT topic, kafka_partition, next_offset FROM consumer_offsets").fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


# The offset base is the new-log check's to move (ledger.store.positions), never an append's.
_UPDATE_OFFSETS = """
UPDATE consumer_offsets SET next_offset = offsets.next_offset, last_record = offsets.last_record
FROM offsets WHERE consumer_offsets.topic = offsets.topic AND consumer_offsets.kafka_partition = offsets.kafka_partition
"""
_INSERT_NEW_OFFSETS = """
INSERT INTO consumer_offsets
SELECT topic, kafka_partition, next_offset, 0, last_record FROM offsets
ANTI JOIN consumer_offsets USING (topic, kafka_partition)
"""


def append(
    connection: duckdb.DuckDBPyConnection,
    rows: StoreRows,
    next_offsets: dict[tuple[str, int], int],
    last_records: dict[tuple[str, int], str] | None = None,
    *,
    dedup_horizon_s: int = DEDUP_HORIZON_S_DEFAULT,
    recent: Mapping[str, RecentKeys] | None = None,
) -> None:
    """Insert ``rows`` (each key once) and move the offsets (with the fingerprint of each
    partition's last record read, where given), all or nothing. ``recent`` holds the keys
    some tables stored lately, for their look-ups; the keys offered are added after the
    commit."""
    recent = recent or {}
    offered: dict[str, pa.Table] = {}
    connection.begin()
    try:
        for table, table_rows in rows.tables.items():
            if table_rows:
                _insert_new(connection, table, arrow_table(table, _first_copies(table, table_rows)), dedup_horizon_s)
        for table, unpacked in (("usage_events", rows.usage_events), ("ledger_entries", rows.ledger_entries)):
            if unpacked is not None:
                (key,) = TABLE_KEYS[table]
                offered[table] = _first_copies_of(unpacked.cast(ARROW_SCHEMAS[table]), key)
                _insert_new(connection, table, offered[table], dedup_horizon_s, recent.get(table))
        if next_offsets:
            fingerprints = last_records or {}
            offsets = pa.table(
                {
                    "topic": [topic for topic, _ in next_offsets],
                    "kafka_partition": pa.array([partition for _, partition in next_offsets], pa.int32()),
                    "next_offset": pa.array(list(next_offsets.values()), pa.int64()),
                    "last_record": pa.array([fingerprints.get(key) for key in next_offsets], pa.string()),
                }
            )
            connection.register("offsets", offsets)
            connection.execute(_UPDATE_OFFSETS)
            connection.execute(_INSERT_NEW_OFFSETS)
            connection.unregister("offsets")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    for table, table_rows in offered.items():  # a key stored already is in the index already: harmless
        if table in recent:
            recent[table].add(connection, table_rows)


def _first_copies(table: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` with each key once: its first copy."""
    places = tuple(TABLE_COLUMNS[table].index(column) for column in TABLE_KEYS[table])
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        first.setdefault(tuple(row[place] for place in places), row)
    return list(first.values())


def _first_copies_of(table: pa.Table, key: str) -> pa.Table:
    """``table`` with each ``key`` once: its first row."""
    if len(pc.unique(table.column(key))) == table.num_rows:
        return table  # the common case: no copies within a batch
    numbered = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    firsts = numbered.group_by(key, use_threads=False).aggregate([("row", "min")]).column("row_min").combine_chunks()
    return table.take(firsts.take(pc.sort_indices(firsts)))


def _insert_new(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    incoming: pa.Table,
    dedup_horizon_s: int,
    recent: RecentKeys | None = None,
) -> None:
    """Insert the rows of ``incoming`` (each key once) whose key ``table`` does not hold
    within its dedup window: looked up in ``recent`` when it covers the window, else in
    the lake."""
    if incoming.num_rows == 0:
        return
    window = _dedup_window(table, incoming, dedup_horizon_s)
    if window is not None and window.column is None:  # no time on any row: nothing stored can be a copy in time
        _insert(connection, table, incoming)
        return
    if window is not None and recent is not None and recent.covers(window.low):
        (key,) = TABLE_KEYS[table]
        copies = recent.stored(connection, incoming.column(key), window.low, window.high or _LATEST)
        if copies:
            incoming = incoming.filter(pc.invert(pc.is_in(incoming.column(key), pa.array(sorted(copies)))))
        _insert(connection, table, incoming)
        return
    match = " AND ".join(f"stored.{key} = incoming.{key}" for key in TABLE_KEYS[table])
    condition, parameters = "", []
    if window is not None:
        condition = f" AND stored.{window.column} " + ("BETWEEN ? AND ?" if window.high else ">= ?")
        parameters = [window.low, window.high] if window.high else [window.low]
    connection.register("incoming", incoming)
    connection.execute(
        f"INSERT INTO {table} SELECT * FROM incoming "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS stored WHERE {match}{condition})",
        parameters,
    )
    connection.unregister("incoming")


def _insert(connection: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    connection.register("incoming", rows)
    connection.execute(f"INSERT INTO {table} SELECT * FROM incoming")
    connection.unregister("incoming")


_LATEST = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Window:
    """Where a copy of an incoming row can be: a stored time in [low, high] (high None: no
    end); column None when no incoming row has a time (no copy can be found in time)."""

    column: str | None
    low: datetime
    high: datetime | None


def _dedup_window(table: str, incoming: pa.Table, dedup_horizon_s: int) -> _Window | None:
    """The times that keep the look-up to the files a copy can be in (None: the whole
    table). They are bound as constants, so the lake skips files by their column bounds."""
    if table not in _DEDUP_WINDOWS:
        return None
    column, kind = _DEDUP_WINDOWS[table]
    times = pc.min_max(incoming.column(column)).as_py()
    low, high = times["min"], times["max"]
    if low is None:
        return _Window(None, _LATEST, None)
    if kind == "horizon":
        return _Window(column, low - timedelta(seconds=dedup_horizon_s), None)
    return _Window(column, low, high)
