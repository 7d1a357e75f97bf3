"""Ad-hoc SQL: each refusal checked against a real lake, which stays unchanged (its rows, its
snapshots and its files)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.store.location import StoreLocation
from ledger.store.schema import StoreUnavailable, open_store
from ledger.store.sql import InvalidStatement, StatementNotAllowed, StatementTimedOut, run_readonly_sql
from tests.stores import lake_at
from tests.unit.store_rows import at, build_store, entry

NOT_EXTERNAL = "reading or writing files, attaching databases and installing or loading extensions are not allowed"
NOT_WRITING = "writing is not allowed: only a query"
NOT_CREATING = "creating objects is not allowed: only a query"
NOT_ATTACHING = "attaching databases is not allowed: only a query"
NOT_COPYING = "COPY (reading or writing files) is not allowed: only a query"
NOT_LOADING = "installing or loading extensions is not allowed: only a query"
NOT_SETTING = "changing settings (SET, USE) is not allowed: only a query"


@pytest.fixture
def store(tmp_path: Path) -> StoreLocation:
    return build_store(
        lake_at(tmp_path),
        entries=[entry(1_000_000_001, "user:alice", occurred_at=at(9)), entry(7, "user:bob", occurred_at=at(10))],
    )


def stored_entries(store: StoreLocation) -> list[tuple[Any, ...]]:
    """The entries, and the lake's snapshots: a statement that wrote anything adds one."""
    with open_store(store, read_only=True) as connection:
        entries = connection.execute("SELECT event_id, cost_nanos FROM ledger_entries ORDER BY cost_nanos").fetchall()
        snapshots = connection.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchall()
        return [*entries, *snapshots]


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the store among them) by path, with its SHA-256: a
    statement that wrote, exported or spilled anything changes it."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(folder.rglob("*"))
    }


def test_a_query_returns_its_columns_and_rows_with_exact_nanos(store):
    result = run_readonly_sql(store, "SELECT sum(cost_nanos) AS spend_nanos, count(*) AS entries FROM ledger_entries")
    assert result.columns == ("spend_nanos", "entries")
    assert result.column_types == ("HUGEINT", "BIGINT")
    assert result.rows == ((1_000_000_008, 2),)
    assert not result.truncated


def test_times_come_back_in_utc(store):
    result = run_readonly_sql(store, "SELECT min(occurred_at) FROM ledger_entries")
    assert result.rows == ((datetime(2025, 11, 3, 9, tzinfo=UTC),),)
    assert result.rows[0][0].utcoffset().total_seconds() == 0


def test_rows_past_the_limit_are_cut_and_the_result_says_so(store):
    result = run_readonly_sql(store, "SELECT range AS n FROM range(25)", row_limit=10)
    assert result.rows == tuple((n,) for n in range(10))
    assert (result.truncated, result.row_limit) == (True, 10)
    assert not run_readonly_sql(store, "SELECT range FROM range(10)", row_limit=10).truncated


@pytest.mark.parametrize(
    ("statement", "headline"),
    [
        ("INSERT INTO ledger_entries SELECT * FROM ledger_entries", NOT_WRITING),
        ("UPDATE ledger_entries SET cost_nanos = 0", NOT_WRITING),
        ("DELETE FROM ledger_entries", NOT_WRITING),
        ("CREATE TABLE stolen AS SELECT * FROM ledger_entries", NOT_CREATING),
        ("DROP TABLE ledger_entries", "dropping objects is not allowed"),
        ("TRUNCATE ledger_entries", NOT_WRITING),
        ("ALTER TABLE ledger_entries ADD COLUMN stolen INTEGER", "altering objects is not allowed"),
        ("CREATE VIEW everything AS SELECT * FROM ledger_entries", NOT_CREATING),
        ("CREATE MACRO double_it(x) AS x * 2", NOT_CREATING),
        ("CREATE SEQUENCE ids", NOT_CREATING),
        ("CREATE INDEX by_model ON ledger_entries (model)", NOT_CREATING),
        ("/* a comment first */ DELETE FROM ledger_entries", NOT_WRITING),
        ("ATTACH ':memory:' AS scratch", NOT_ATTACHING),
        ("COPY ledger_entries TO '{dir}/out.csv'", NOT_COPYING),
        ("COPY (SELECT * FROM ledger_entries) TO '{dir}/out.parquet' (FORMAT parquet)", NOT_COPYING),
        ("COPY ledger_entries FROM '{dir}/in.csv'", NOT_COPYING),
        ("COPY ledger_entries FROM '/etc/passwd'", NOT_COPYING),
        ("EXPORT DATABASE '{dir}/exported'", "exporting the database is not allowed"),
        ("SELECT * FROM read_csv('{dir}/in.csv')", NOT_EXTERNAL),
        ("SELECT * FROM read_csv('/etc/passwd')", NOT_EXTERNAL),
        ("SELECT * FROM read_csv_auto(['/etc/passwd', '{dir}/in.csv'])", NOT_EXTERNAL),
        ("SELECT * FROM sniff_csv('{dir}/in.csv')", NOT_EXTERNAL),
        ("SELECT * FROM '{dir}/in.csv'", NOT_EXTERNAL),
        ("SELECT * FROM read_parquet('{dir}/in.parquet')", NOT_EXTERNAL),
        ("SELECT * FROM parquet_metadata('{dir}/in.parquet')", NOT_EXTERNAL),
        ("SELECT * FROM read_json('{dir}/in.json')", NOT_EXTERNAL),
        ("SELECT * FROM read_json_auto('{dir}/in.json')", NOT_EXTERNAL),
        ("SELECT * FROM read_ndjson('{dir}/in.json')", NOT_EXTERNAL),
        ("SELECT * FROM read_text('/etc/hostname')", NOT_EXTERNAL),
        ("SELECT * FROM read_text('/etc/passwd')", NOT_EXTERNAL),
        ("SELECT * FROM read_text('file:///etc/passwd')", NOT_EXTERNAL),
        ("SELECT * FROM read_text('/proc/self/environ')", NOT_EXTERNAL),
        ("SELECT * FROM read_blob('/etc/passwd')", NOT_EXTERNAL),
        ("SELECT * FROM read_blob('{dir}/in.csv')", NOT_EXTERNAL),
        ("SELECT * FROM glob('/etc/*')", NOT_EXTERNAL),
        ("SELECT * FROM glob('{dir}/*')", NOT_EXTERNAL),
        ("SELECT * FROM read_parquet('https://example.com/ledger.parquet')", NOT_EXTERNAL),
        ("SELECT * FROM read_parquet('s3://bucket/ledger.parquet')", NOT_EXTERNAL),
        ("ATTACH '{dir}/other.duckdb' AS other", NOT_ATTACHING),
        ("ATTACH '{dir}/other.duckdb' AS other (READ_ONLY)", NOT_ATTACHING),
        ("ATTACH 'https://example.com/other.duckdb' AS other", NOT_ATTACHING),
        ("INSTALL httpfs", NOT_LOADING),
        ("FORCE INSTALL httpfs", NOT_LOADING),
        ("INSTALL '{dir}/evil.duckdb_extension'", NOT_LOADING),
        ("LOAD httpfs", NOT_LOADING),
        ("LOAD '{dir}/evil.duckdb_extension'", NOT_LOADING),
        ("CREATE SECRET stolen (TYPE s3, KEY_ID 'id', SECRET 'secret')", NOT_CREATING),
        ("CREATE PERSISTENT SECRET stolen (TYPE s3, KEY_ID 'id', SECRET 'secret')", NOT_CREATING),
        ("SET enable_external_access = true", NOT_SETTING),
        ("SET GLOBAL enable_external_access = true", NOT_SETTING),
        ("SET SESSION enable_external_access = true", NOT_SETTING),
        ("SET lock_configuration = false", NOT_SETTING),
        ("RESET lock_configuration", NOT_SETTING),
        ("SET allowed_directories = ['/']", NOT_SETTING),
        ("SET allowed_paths = ['/etc/passwd']", NOT_SETTING),
        ("SET autoinstall_known_extensions = true", NOT_SETTING),
        ("SET extension_directory = '{dir}'", NOT_SETTING),
        ("SET temp_directory = '{dir}'", NOT_SETTING),
        ("SET threads = 1", NOT_SETTING),
        ("SET memory_limit = '1GB'", NOT_SETTING),
        ("PRAGMA threads = 1", NOT_SETTING),
        ("PRAGMA enable_profiling", "PRAGMA is not allowed"),
        ("PRAGMA profiling_output = '{dir}/profile.txt'", NOT_SETTING),
        ("CALL enable_logging()", "calling procedures (CALL, CHECKPOINT) is not allowed"),
        ("IMPORT DATABASE '{dir}'", NOT_EXTERNAL),
        ("DETACH lake", "detaching databases is not allowed"),
        ("MERGE INTO ledger_entries USING ledger_entries AS l ON false WHEN NOT MATCHED THEN INSERT *", NOT_WRITING),
        ("CHECKPOINT", "calling procedures (CALL, CHECKPOINT) is not allowed"),
        ("VACUUM", "maintenance (VACUUM, ANALYZE) is not allowed"),
        ("BEGIN TRANSACTION", "transaction control is not allowed"),
        ("CREATE TEMP TABLE scratch AS SELECT * FROM ledger_entries", NOT_CREATING),
    ],
)
def test_a_statement_that_writes_reads_files_attaches_or_loads_is_refused(store, tmp_path, statement, headline):
    (tmp_path / "in.csv").write_text("a\n1\n")
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    (tmp_path / "in.json").write_text('[{"a": 1}]')
    before, files_before = stored_entries(store), folder_state(tmp_path)
    with pytest.raises(StatementNotAllowed) as refused:
        run_readonly_sql(store, statement.format(dir=tmp_path))
    message = str(refused.value)
    assert message.startswith(headline)
    if headline == NOT_EXTERNAL:  # DuckDB refused it as it ran: its own words follow ours
        assert "DuckDB said: " in message
    assert "root:" not in message  # nothing of /etc/passwd came back in the error
    assert stored_entries(store) == before
    assert folder_state(tmp_path) == files_before  # the store's bytes too; no file written


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
        ("SELECT * FROM query('DELETE FROM ledger_entries')", "Expected a single SELECT statement"),
    ],
)
def test_smuggling_a_write_or_a_file_through_a_query_does_not_run(store, tmp_path, statement, said):
    files_before = folder_state(tmp_path)
    with pytest.raises(InvalidStatement, match="DuckDB could not run the statement") as refused:
        run_readonly_sql(store, statement)
    assert said in str(refused.value)
    assert folder_state(tmp_path) == files_before
    assert len(stored_entries(store)) == 3  # two entries and the snapshot count


def test_the_sandbox_has_the_lake_read_only_external_access_off_and_its_configuration_locked(store):
    result = run_readonly_sql(
        store,
        "SELECT (SELECT readonly FROM duckdb_databases() WHERE database_name = 'lake'), "
        "current_setting('enable_external_access'), current_setting('lock_configuration')",
    )
    assert result.rows == ((True, False, True),)


def test_the_lakes_own_files_and_metadata_are_readable_and_hold_the_same_rows(store):
    """The one folder the sandbox lets a query read is the lake's: the same data as the
    tables (a reader may look at the Parquet files or the snapshots directly)."""
    files = run_readonly_sql(
        store, f"SELECT count(*), sum(cost_nanos) FROM read_parquet('{store.data_path}main/ledger_entries/*.parquet')"
    )
    table = run_readonly_sql(store, "SELECT count(*), sum(cost_nanos) FROM ledger_entries")
    assert files.rows == table.rows == ((2, 1_000_000_008),)
    snapshots = run_readonly_sql(store, "SELECT count(*) > 0 FROM ducklake_snapshots('lake')")
    assert snapshots.rows == ((True,),)
    assert run_readonly_sql(store, "SELECT * FROM duckdb_secrets()").rows == ()  # a local lake needs none


def test_getenv_is_no_way_to_read_the_secrets_in_the_environment(store, monkeypatch):
    secret = "sk-master-from-the-environment-0123456789"
    monkeypatch.setenv("SPEND_LEDGER_MASTER_KEY", secret)
    with pytest.raises(InvalidStatement, match="Scalar Function with name getenv does not exist") as refused:
        run_readonly_sql(store, "SELECT getenv('SPEND_LEDGER_MASTER_KEY')")
    assert secret not in str(refused.value)
    settings = run_readonly_sql(store, "SELECT name, value FROM duckdb_settings()", row_limit=10_000)
    assert settings.rows  # the settings are readable, and none holds the environment's secret
    assert not [row for row in settings.rows if secret in str(row)]


@pytest.mark.parametrize(
    ("statement", "rows"),
    [
        ("SELECT count(*) FROM ledger_entries -- ; DELETE FROM ledger_entries", ((2,),)),
        ("SELECT count(*) FROM ledger_entries /* ; DROP TABLE ledger_entries; */", ((2,),)),
        ("SELECT '; DELETE FROM ledger_entries' AS text", (("; DELETE FROM ledger_entries",),)),
        ("SELECT count(*) FROM ledger_entries;", ((2,),)),
    ],
)
def test_a_statement_hidden_in_a_comment_or_a_string_is_not_run(store, tmp_path, statement, rows):
    files_before = folder_state(tmp_path)
    assert run_readonly_sql(store, statement).rows == rows
    assert folder_state(tmp_path) == files_before
    assert len(stored_entries(store)) == 3  # two entries and the snapshot count


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1; DELETE FROM ledger_entries",
        "DELETE FROM ledger_entries; SELECT 1",
        "SELECT 1; SET enable_external_access = true; SELECT * FROM read_text('/etc/passwd')",
        "SELECT 1;\n-- a comment\nDROP TABLE ledger_entries",
    ],
)
def test_a_second_statement_refuses_the_whole_text_before_anything_runs(store, tmp_path, statement):
    files_before = folder_state(tmp_path)
    with pytest.raises(StatementNotAllowed, match=r"exactly one SQL statement is allowed, got [23]$"):
        run_readonly_sql(store, statement)
    assert folder_state(tmp_path) == files_before
    assert len(stored_entries(store)) == 3  # two entries and the snapshot count


@pytest.mark.parametrize(
    "statement",
    [
        "FORCE CHECKPOINT",
        "ANALYZE",
        "CREATE TEMP VIEW scratch AS SELECT * FROM ledger_entries",
        "CREATE TEMP MACRO scratch(x) AS x",
    ],
)
def test_maintenance_and_temporary_objects_are_refused_too(store, tmp_path, statement):
    """Only queries run: not even what would change nothing in a read-only lake."""
    before, files_before = stored_entries(store), folder_state(tmp_path)
    with pytest.raises(StatementNotAllowed, match="is not allowed: only a query"):
        run_readonly_sql(store, statement)
    assert folder_state(tmp_path) == files_before
    assert stored_entries(store) == before


def test_only_one_statement_is_allowed(store):
    with pytest.raises(StatementNotAllowed, match="exactly one SQL statement is allowed, got 2"):
        run_readonly_sql(store, "SELECT 1; SELECT 2")
    with pytest.raises(StatementNotAllowed, match="exactly one SQL statement is allowed, got 0"):
        run_readonly_sql(store, "  -- nothing\n")


def test_a_syntax_error_or_unknown_table_is_an_invalid_statement_in_duckdbs_words(store):
    with pytest.raises(InvalidStatement) as syntax:
        run_readonly_sql(store, "SELEC 1")
    assert str(syntax.value).startswith(
        'DuckDB could not parse the statement: Parser Error: syntax error at or near "SELEC"'
    )
    with pytest.raises(InvalidStatement) as unknown:
        run_readonly_sql(store, "SELECT * FROM nope")
    assert str(unknown.value).startswith(
        "DuckDB could not run the statement. DuckDB said: Catalog Error: Table with name nope"
    )


def test_a_statement_running_past_its_time_limit_is_stopped(store):
    started = time.monotonic()
    with pytest.raises(StatementTimedOut) as stopped:
        run_readonly_sql(store, "SELECT count(*) FROM range(1000000000000)", timeout_s=0.2)
    assert str(stopped.value) == "the statement ran longer than 0.2 s and was stopped"
    assert time.monotonic() - started < 10


def test_a_missing_store_is_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="nothing stored yet in the lake at"):
        run_readonly_sql(lake_at(tmp_path / "nowhere"), "SELECT 1")


WRITER_IN_ANOTHER_PROCESS = """
import sys
from ledger.store.location import StoreLocation
from ledger.store.schema import open_store
connection = open_store(StoreLocation(sys.argv[1], sys.argv[2]))
connection.begin()
connection.execute("INSERT INTO ledger_entries SELECT * REPLACE (entry_id || '-copy' AS entry_id) FROM ledger_entries")
print("inserted", flush=True)
sys.stdin.readline()
connection.commit()
print("committed", flush=True)
sys.stdin.readline()
"""


def test_a_store_its_writer_holds_open_in_another_process_answers_with_what_it_committed(store):
    """The point of the lake: the api keeps its writing connection, and readers elsewhere
    see each of its commits whole, and nothing of one not committed yet."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_IN_ANOTHER_PROCESS, store.catalog, store.data_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    count = "SELECT count(*), sum(cost_nanos) FROM ledger_entries"
    try:
        assert writer.stdin is not None
        assert writer.stdout is not None
        assert writer.stdout.readline() == "inserted\n"
        assert run_readonly_sql(store, count).rows == ((2, 1_000_000_008),)
        writer.stdin.write("commit\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "committed\n"
        assert run_readonly_sql(store, count).rows == ((4, 2_000_000_016),)
    finally:
        writer.kill()
        writer.wait(timeout=10)


@pytest.mark.parametrize("row_limit", [0, 1_000_001])
def test_a_row_limit_outside_one_to_a_million_is_refused(store, row_limit):
    with pytest.raises(ValueError, match=f"row_limit must be between 1 and 1000000, got {row_limit}"):
        run_readonly_sql(store, "SELECT 1", row_limit=row_limit)
