"""The store's tables and how to open it (docs/decisions/0001-analytics-table-format.md).

The store is a DuckLake: Parquet data files under ``StoreLocation.data_path`` and a
catalog in PostgreSQL that says which files make each snapshot. One process writes (the
api, which hosts the projector); any number of others read at the same time, each query
at one snapshot: whole projector commits only. DuckDB loads the lake's extensions from
their wheels' files, never from the network. Times are TIMESTAMPTZ in UTC, money BIGINT
nanos.

A DuckLake table has no primary key: each table's key (named in ``TABLE_KEYS``) is kept
unique by the writer (``ledger.store.writer``), the only process that inserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ledger.settings import Settings
from ledger.store.location import S3Access, StoreLocation, store_location

SCHEMA_VERSION = 5  # 5: the store is a DuckLake (a DuckDB file before)
LAKE = "lake"  # the name the lake is attached under; every connection USEs it

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS store_meta (
    name VARCHAR NOT NULL,
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
    offset_base BIGINT NOT NULL,
    last_record VARCHAR
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
    event_id VARCHAR NOT NULL,
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
    entry_id VARCHAR NOT NULL,
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
    command_id VARCHAR NOT NULL,
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
    alert_id VARCHAR NOT NULL,
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
    version VARCHAR NOT NULL,
    book_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    book JSON NOT NULL,
    source_offset BIGINT NOT NULL
);
-- What the worker refused; dead_letter_id is derived from the record, so a record the
-- worker refused again after a restart is stored once.
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id VARCHAR NOT NULL,
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
    event JSON NOT NULL
);
-- Model capacities, the priority reservation and key priorities, every record read; the
-- last one per topic_key (by partition and offset) is in force.
CREATE TABLE IF NOT EXISTS rate_limit_records (
    record_id VARCHAR NOT NULL,
    topic_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL,
    record JSON NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL
);
"""

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


# Each table's key: no two rows share it (first copy read wins).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "usage_events": ("event_id",),
    "ledger_entries": ("entry_id",),
    "budget_commands": ("command_id",),
    "budget_alerts": ("alert_id",),
    "price_books": ("version",),
    "dead_letters": ("dead_letter_id",),
    "admission_events": ("request_id", "state"),
    "rate_limit_records": ("record_id",),
}
_EXTENSIONS = (
    ("duckdb_extension_ducklake", "ducklake"),
    ("duckdb_extension_postgres_scanner", "postgres_scanner"),
)
_S3_EXTENSION = ("duckdb_extension_httpfs", "httpfs")


# Extension files this process has loaded once with DuckDB's signature check (about 0.3 s
# a connection for the two); later connections load them without it. Nothing else is ever
# loaded: the api's and CLI's statements are ours, and ad-hoc SQL can load nothing.
_verified_extensions: set[Path] = set()


class StoreUnavailable(Exception):
    """The store cannot be opened: no catalog answers, or the lake was never written."""


class NothingStored(StoreUnavailable):
    """A read of a lake no writer has made its tables in yet."""


def extension_file(module_name: str, extension: str) -> Path:
    """The extension's file in its wheel, built for this duckdb version."""
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise StoreUnavailable(
            f"the store needs the {module_name.replace('_', '-')} package: pip install 'spend-ledger[server]'"
        ) from exc
    path = Path(str(module.__file__)).parent / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension"
    if not path.exists():
        raise StoreUnavailable(f"{path} is missing: {module_name} does not match duckdb {duckdb.__version__}")
    return path


def open_store(store: StoreLocation, *, read_only: bool = False, sandboxed: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection with the lake at ``store`` attached and in use; the writer creates
    the tables if missing.

    A read-only connection never creates anything, and refuses a lake with no tables yet.
    ``sandboxed`` (read-only only, for ad-hoc SQL) also turns off access to every file but
    the lake's own, every network address and every extension, and locks the configuration,
    so no statement can turn it back on.
    """
    if sandboxed and not read_only:
        raise ValueError("only a read-only store can be sandboxed")
    wanted = [*_EXTENSIONS, _S3_EXTENSION] if store.s3 is not None else list(_EXTENSIONS)
    extensions = [extension_file(module_name, extension) for module_name, extension in wanted]
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_unsigned_extensions": _verified_extensions.issuperset(extensions),
    }
    connection = duckdb.connect(config=config)
    try:
        for path in extensions:
            connection.execute(f"LOAD '{path}'")
        _verified_extensions.update(extensions)
        if store.s3 is not None:
            connection.execute(_s3_secret(store.s3))
        if not read_only and "://" not in store.data_path:
            Path(store.data_path).mkdir(parents=True, exist_ok=True)
        options = f"DATA_PATH '{_quoted(store.data_path)}'" + (", READ_ONLY" if read_only else "")
        try:
            connection.execute(f"ATTACH 'ducklake:postgres:{_quoted(store.catalog)}' AS {LAKE} ({options})")
        except duckdb.Error as exc:
            if read_only and "creating a new DuckLake is explicitly disabled" in str(exc):
                raise NothingStored(
                    f"nothing stored yet in {store}: start the api (or spend-ledger project) first"
                ) from exc
            raise StoreUnavailable(f"cannot open {store}: {exc}") from exc
        connection.execute(f"USE {LAKE}")
        connection.execute("SET TimeZone = 'UTC'")
        if read_only:
            connection.begin()  # one snapshot for the connection's life: its queries agree with each other
            tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
            if "consumer_offsets" not in tables:
                raise NothingStored(f"nothing stored yet in {store}: start the api (or spend-ledger project) first")
        else:
            connection.begin()  # one catalog commit for every table (each its own: ~10x slower)
            connection.execute(TABLES_SQL)
            stored = connection.execute("SELECT value FROM store_meta WHERE name = 'schema_version'").fetchall()
            if stored != [(str(SCHEMA_VERSION),)]:
                connection.execute("DELETE FROM store_meta WHERE name = 'schema_version'")
                connection.execute("INSERT INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            connection.commit()
            _set_inlining(connection)  # not in the transaction that made the tables: DuckLake refuses it
        if sandboxed:
            connection.execute("SET allowed_directories = [?]", [store.data_path])  # a folder, or an s3:// prefix
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")  # last: a locked one refuses even SET
    except BaseException:
        connection.close()
        raise
    return connection


# Rows of a data table go to Parquet files at once, never inlined in the catalog: readers
# of the files alone see every row. The two small tables rewritten on every commit stay in
# the catalog until maintenance flushes them.
_INLINED_TABLES = ("consumer_offsets", "store_meta")
_INLINED_ROWS_MAX = 1_000


def _set_inlining(connection: duckdb.DuckDBPyConnection) -> None:
    set_ = {
        (row[0], row[1])
        for row in connection.execute(f"SELECT option_name, scope_entry FROM {LAKE}.options()").fetchall()
    }
    if ("data_inlining_row_limit", None) not in set_:
        connection.execute(f"CALL {LAKE}.set_option('data_inlining_row_limit', 0)")
    for table in _INLINED_TABLES:
        if ("data_inlining_row_limit", f"main.{table}") not in set_:
            connection.execute(
                f"CALL {LAKE}.set_option('data_inlining_row_limit', {_INLINED_ROWS_MAX}, table_name => '{table}')"
            )


def cursor(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A connection of its own onto the same lake (one per thread or request), set up as
    ``open_store`` sets one up: a cursor does not inherit ``USE`` or the time zone."""
    own = connection.cursor()
    own.execute(f"USE {LAKE}")
    own.execute("SET TimeZone = 'UTC'")
    return own


def _s3_secret(s3: S3Access) -> str:
    """The DuckDB secret the lake's files on S3 are read and written with (this connection's
    only: a temporary secret, never written to disk)."""
    options = [f"REGION '{_quoted(s3.region)}'", f"URL_STYLE '{_quoted(s3.url_style)}'", f"USE_SSL {s3.use_ssl}"]
    if s3.endpoint is not None:
        options.append(f"ENDPOINT '{_quoted(s3.endpoint)}'")
    if s3.key_id is not None:
        options.append(f"KEY_ID '{_quoted(s3.key_id)}'")
    if s3.secret is not None:
        options.append(f"SECRET '{_quoted(s3.secret)}'")
    return f"CREATE TEMPORARY SECRET lake_s3 (TYPE s3, {', '.join(options)})"


def _quoted(text: str) -> str:
    """``text`` inside a SQL string literal."""
    return text.replace("'", "''")


@contextmanager
def opened_store(
    settings: Settings, *, read_only: bool = False, sandboxed: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``open_store`` on the store the settings name, its catalog reachable (an embedded
    server started for the block is stopped after it), closed after the block."""
    with store_location(settings) as store:
        connection = open_store(store, read_only=read_only, sandboxed=sandboxed)
        try:
            yield connection
        finally:
            connection.close()
