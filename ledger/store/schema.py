"""The store's tables and how to open it.

DuckDB admits one writing process (the api, which hosts the projector); every other
reader opens the file read-only. Times are TIMESTAMPTZ in UTC, money BIGINT nanos.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

SCHEMA_VERSION = 4  # 2: consumer_offsets.offset_base and last_record (telling a new log from the old)
# 3: usage_events.occurred_at_source; 4: usage_events.model_group

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS store_meta (
    name VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
-- The next offset to read per input partition on the broker's current log, written in the
-- same transaction as the rows read before it: a restart continues exactly there.
-- offset_base: added to the current log's offsets in every stored source_offset (the ends
-- of the logs read before it, so stored offsets only grow); last_record: a fingerprint of
-- the record at next_offset - 1, to tell a new log from this one (ledger.store.positions).
CREATE TABLE IF NOT EXISTS consumer_offsets (
    topic VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    offset_base BIGINT NOT NULL DEFAULT 0,
    last_record VARCHAR,
    PRIMARY KEY (topic, kafka_partition)
);
-- Every valid usage event, once per event_id (the first copy read wins), priced or not:
-- its validated fields and the token counts it is priced by (message text is not kept),
-- and when its message reached the log (the record's timestamp: what restore takes for
-- when the worker saw it; NULL in stores written before it was kept). occurred_at_source:
-- "received" when the event named no time and occurred_at is when it was received (the
-- record's timestamp, or the api's clock over HTTP); NULL in stores written before it.
-- model_group: the name the call asked for (a LiteLLM proxy model_name, often an alias of
-- model, the priced model); NULL when the event named none.
CREATE TABLE IF NOT EXISTS usage_events (
    event_id VARCHAR PRIMARY KEY,
    occurred_at TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    provider VARCHAR,
    user_id VARCHAR,
    team_id VARCHAR,
    key_id VARCHAR,
    end_user VARCHAR,
    tags VARCHAR[] NOT NULL,
    scope_keys VARCHAR[] NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    has_usage BOOLEAN NOT NULL,
    tokens_estimated BOOLEAN NOT NULL,
    reported_cost_nanos BIGINT,
    metadata JSON,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    received_at TIMESTAMPTZ,
    occurred_at_source VARCHAR,
    model_group VARCHAR
);
CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_id VARCHAR PRIMARY KEY,
    event_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    provider VARCHAR,
    priced_as VARCHAR,
    scope_keys VARCHAR[] NOT NULL,
    cost_nanos BIGINT NOT NULL,
    cost_source VARCHAR NOT NULL,
    price_book_version VARCHAR,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    tokens_estimated BOOLEAN NOT NULL,
    batch_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_commands (
    command_id VARCHAR PRIMARY KEY,
    scope_key VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL,
    alias VARCHAR,
    limit_name VARCHAR,
    command JSON NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_alerts (
    alert_id VARCHAR PRIMARY KEY,
    scope_key VARCHAR NOT NULL,
    alias VARCHAR,
    limit_name VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end TIMESTAMPTZ,
    spend_nanos BIGINT NOT NULL,
    max_budget_nanos BIGINT,
    soft_budget_nanos BIGINT,
    threshold_nanos BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    trigger_id VARCHAR NOT NULL,
    message VARCHAR NOT NULL
);
-- Every price book published, in the order read (the last one is the current book).
-- source_offset (here and in the other tables but dead_letters) is offset_base + the
-- record's offset: it orders records read later after earlier ones, across logs.
CREATE TABLE IF NOT EXISTS price_books (
    version VARCHAR PRIMARY KEY,
    book_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    book JSON NOT NULL,
    source_offset BIGINT NOT NULL
);
-- What the worker refused; dead_letter_id is derived from the record, so a record the
-- worker refused again after a restart is stored once.
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id VARCHAR PRIMARY KEY,
    source_topic VARCHAR NOT NULL,
    source_partition INTEGER,
    source_offset BIGINT,
    stage VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    detail VARCHAR NOT NULL,
    event_id VARCHAR,
    original_key_b64 VARCHAR,
    original_value_b64 VARCHAR NOT NULL
);
-- Admission holds (DESIGN section 10): one row per request id and state it took.
CREATE TABLE IF NOT EXISTS admission_events (
    request_id VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    event_at TIMESTAMPTZ NOT NULL,
    instance_id VARCHAR NOT NULL,
    scope_keys VARCHAR[] NOT NULL,
    model VARCHAR,
    rate_key VARCHAR,
    priority VARCHAR,
    estimate_nanos BIGINT NOT NULL,
    estimated_tokens BIGINT NOT NULL,
    expires_at TIMESTAMPTZ,
    cost_nanos BIGINT,
    tokens BIGINT,
    event JSON NOT NULL,
    PRIMARY KEY (request_id, state)
);
-- Model capacities, the priority reservation and key priorities, every record read; the
-- last one per topic_key (by partition and offset) is in force.
CREATE TABLE IF NOT EXISTS rate_limit_records (
    record_id VARCHAR PRIMARY KEY,
    topic_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL,
    record JSON NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL
);
"""

# Columns added since version 1, for a store file written before them. DuckDB refuses
# ADD COLUMN IF NOT EXISTS for a NOT NULL column, hence the look-up first.
_ADDED_COLUMNS = (
    ("consumer_offsets", "offset_base", "BIGINT NOT NULL DEFAULT 0"),
    ("consumer_offsets", "last_record", "VARCHAR"),
    ("usage_events", "received_at", "TIMESTAMPTZ"),
    ("usage_events", "occurred_at_source", "VARCHAR"),
    ("usage_events", "model_group", "VARCHAR"),
)

STORE_TABLES = (
    "usage_events",
    "ledger_entries",
    "budget_commands",
    "budget_alerts",
    "price_books",
    "dead_letters",
    "admission_events",
    "rate_limit_records",
    "consumer_offsets",
)


class StoreUnavailable(Exception):
    """The store cannot be opened: missing, or held by its writer in another process."""


def open_store(path: Path, *, read_only: bool = False, sandboxed: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the store at ``path``; the writer creates the file and its tables if missing.

    A read-only connection never creates anything. DuckDB locks the file for the process
    that writes it, so while the api (or ``spend-ledger project``) runs, other processes
    get ``StoreUnavailable`` naming the holder, and ask the api instead.

    ``sandboxed`` (read-only only, for ad-hoc SQL) also turns off every file, network and
    extension access and locks the configuration, so no statement can turn it back on.
    """
    if sandboxed and not read_only:
        raise ValueError("only a read-only store can be sandboxed")
    if read_only and not path.exists():
        raise StoreUnavailable(f"no ledger store at {path}: start the api (or `spend-ledger project`) first")
    try:
        if sandboxed:
            connection = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
        elif read_only:
            connection = duckdb.connect(str(path), read_only=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = duckdb.connect(str(path))
            connection.execute(TABLES_SQL)
            _add_columns(connection)
            connection.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        raise StoreUnavailable(
            f"the ledger store {path} is open for writing by another process (the api or the projector); "
            "ask the api instead (GET /v1/spend, /v1/alerts, /v1/dead-letters, POST /v1/replay), "
            f"or stop that process first. DuckDB said: {exc}"
        ) from exc
    connection.execute("SET TimeZone = 'UTC'")
    if sandboxed:  # last: a locked configuration refuses even the time zone above
        connection.execute("SET lock_configuration = true")
    return connection


def _add_columns(connection: duckdb.DuckDBPyConnection) -> None:
    """Bring a store file written by an earlier version up to this schema (rows kept)."""
    found = set(
        connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
        ).fetchall()
    )
    for table, column, definition in _ADDED_COLUMNS:
        if (table, column) not in found:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
