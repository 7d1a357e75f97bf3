"""Appending rows to the store: every table and the consumer offsets in one transaction.

Rows go in as Arrow tables (one insert per table per batch, never row by row). A key
seen before is ignored (``INSERT OR IGNORE`` on each table's primary key), so input read
again after a crash adds nothing; with the offsets committed alongside, it is not even
read again unless the crash came before the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from ledger.store.records import TABLE_COLUMNS, StoreRows

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


# The worker's LedgerEntryBatch JSON, unpacked in DuckDB (a Python loop cost ~19 us an entry).
_ENTRY_JSON = (
    '{"batch_id": "VARCHAR", "entries": [{"entry_id": "VARCHAR", "event_id": "VARCHAR", "kind": "VARCHAR",'
    ' "occurred_at": "VARCHAR", "model": "VARCHAR", "provider": "VARCHAR", "priced_as": "VARCHAR",'
    ' "scope_keys": ["VARCHAR"], "cost_nanos": "BIGINT", "cost_source": "VARCHAR", "price_book_version": "VARCHAR",'
    ' "usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT"}, "tokens_estimated": "BOOLEAN"}]}'
)
_INSERT_ENTRIES = f"""
INSERT OR IGNORE INTO ledger_entries
SELECT e.entry_id, coalesce(e.event_id, e.entry_id), coalesce(e.kind, 'charge'), TRY_CAST(e.occurred_at AS TIMESTAMPTZ),
       e.model, e.provider, e.priced_as, e.scope_keys, e.cost_nanos, coalesce(e.cost_source, 'price_book'),
       e.price_book_version, coalesce(e.usage.prompt_tokens, 0), coalesce(e.usage.completion_tokens, 0),
       coalesce(e.tokens_estimated, false), coalesce(batch_id, '')
FROM (SELECT unnest(parsed.entries) AS e, parsed.batch_id AS batch_id
      FROM (SELECT from_json(batch, '{_ENTRY_JSON}') AS parsed FROM incoming))
WHERE e.entry_id IS NOT NULL AND TRY_CAST(e.occurred_at AS TIMESTAMPTZ) IS NOT NULL AND e.model IS NOT NULL
  AND e.scope_keys IS NOT NULL AND e.cost_nanos IS NOT NULL
"""


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
_UPSERT_OFFSETS = """
INSERT INTO consumer_offsets (topic, kafka_partition, next_offset, last_record)
SELECT topic, kafka_partition, next_offset, last_record FROM offsets
ON CONFLICT (topic, kafka_partition)
DO UPDATE SET next_offset = excluded.next_offset, last_record = excluded.last_record
"""


def append(
    connection: duckdb.DuckDBPyConnection,
    rows: StoreRows,
    next_offsets: dict[tuple[str, int], int],
    last_records: dict[tuple[str, int], str] | None = None,
) -> None:
    """Insert ``rows`` and move the offsets (with the fingerprint of each partition's last
    record read, where given), all or nothing."""
    connection.begin()
    try:
        for table, table_rows in rows.tables.items():
            if not table_rows:
                continue
            connection.register("incoming", arrow_table(table, table_rows))
            connection.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM incoming")
            connection.unregister("incoming")
        if rows.entry_batches:
            connection.register("incoming", pa.table({"batch": pa.array(rows.entry_batches, pa.string())}))
            connection.execute(_INSERT_ENTRIES)
            connection.unregister("incoming")
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
            connection.execute(_UPSERT_OFFSETS)
            connection.unregister("offsets")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
