"""Ad-hoc SQL: each refusal checked against a real DuckDB file, which stays unchanged."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from ledger.store.schema import StoreUnavailable
from ledger.store.sql import InvalidStatement, StatementNotAllowed, StatementTimedOut, run_readonly_sql
from tests.unit.store_rows import at, build_store, entry

NOT_EXTERNAL = "reading or writing files, attaching databases and installing or loading extensions are not allowed"
NOT_WRITING = "writing is not allowed: the store is open read-only"
NOT_SETTING = "changing settings is not allowed: the configuration is locked"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return build_store(
        tmp_path / "ledger.duckdb",
        entries=[entry(1_000_000_001, "user:alice", occurred_at=at(9)), entry(7, "user:bob", occurred_at=at(10))],
    )


def stored_entries(path: Path) -> list[tuple[str, int]]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute("SELECT event_id, cost_nanos FROM ledger_entries ORDER BY cost_nanos").fetchall()


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
        ("CREATE TABLE stolen AS SELECT * FROM ledger_entries", NOT_WRITING),
        ("DROP TABLE ledger_entries", NOT_WRITING),
        ("TRUNCATE ledger_entries", NOT_WRITING),
        ("ALTER TABLE ledger_entries ADD COLUMN stolen INTEGER", NOT_WRITING),
        ("CREATE VIEW everything AS SELECT * FROM ledger_entries", NOT_WRITING),
        ("CREATE MACRO double_it(x) AS x * 2", NOT_WRITING),
        ("CREATE SEQUENCE ids", NOT_WRITING),
        ("CREATE INDEX by_model ON ledger_entries (model)", NOT_WRITING),
        ("/* a comment first */ DELETE FROM ledger_entries", NOT_WRITING),
        ("ATTACH ':memory:' AS scratch", NOT_WRITING),
        ("COPY ledger_entries TO '{dir}/out.csv'", NOT_EXTERNAL),
        ("COPY (SELECT * FROM ledger_entries) TO '{dir}/out.parquet' (FORMAT parquet)", NOT_EXTERNAL),
        ("COPY ledger_entries FROM '{dir}/in.csv'", NOT_EXTERNAL),
        ("COPY ledger_entries FROM '/etc/passwd'", NOT_EXTERNAL),
        ("EXPORT DATABASE '{dir}/exported'", NOT_EXTERNAL),
        ("IMPORT DATABASE '{dir}'", NOT_EXTERNAL),
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
        ("ATTACH '{dir}/other.duckdb' AS other", NOT_EXTERNAL),
        ("ATTACH '{dir}/other.duckdb' AS other (READ_ONLY)", NOT_EXTERNAL),
        ("ATTACH 'https://example.com/other.duckdb' AS other", NOT_EXTERNAL),
        ("INSTALL httpfs", NOT_EXTERNAL),
        ("FORCE INSTALL httpfs", NOT_EXTERNAL),
        ("INSTALL '{dir}/evil.duckdb_extension'", NOT_EXTERNAL),
        ("LOAD httpfs", NOT_EXTERNAL),
        ("LOAD '{dir}/evil.duckdb_extension'", NOT_EXTERNAL),
        ("CREATE SECRET stolen (TYPE s3, KEY_ID 'id', SECRET 'secret')", NOT_EXTERNAL),
        ("CREATE PERSISTENT SECRET stolen (TYPE s3, KEY_ID 'id', SECRET 'secret')", NOT_EXTERNAL),
        ("SELECT * FROM duckdb_secrets()", NOT_EXTERNAL),
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
        ("PRAGMA enable_profiling", NOT_SETTING),
        ("PRAGMA profiling_output = '{dir}/profile.txt'", NOT_SETTING),
        ("CALL enable_logging()", NOT_SETTING),
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
    assert "DuckDB said: " in message  # DuckDB's own words follow ours
    assert "root:" not in message  # nothing of /etc/passwd came back in the error
    assert stored_entries(store) == before
    assert folder_state(tmp_path) == files_before  # the store's bytes too; no file written


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("DETACH ledger", 'Cannot detach database "ledger"'),
        ("DETACH DATABASE IF EXISTS ledger", 'Cannot detach database "ledger"'),
        ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
        ("SELECT * FROM query('DELETE FROM ledger_entries')", "Expected a single SELECT statement"),
    ],
)
def test_detaching_the_store_or_smuggling_a_write_through_query_does_not_run(store, tmp_path, statement, said):
    files_before = folder_state(tmp_path)
    with pytest.raises(InvalidStatement, match="DuckDB could not run the statement") as refused:
        run_readonly_sql(store, statement)
    assert said in str(refused.value)
    assert folder_state(tmp_path) == files_before
    assert len(stored_entries(store)) == 2


def test_the_sandbox_has_external_access_off_and_its_configuration_locked(store):
    result = run_readonly_sql(
        store,
        "SELECT current_setting('access_mode'), current_setting('enable_external_access'), "
        "current_setting('lock_configuration')",
    )
    assert result.rows == (("read_only", False, True),)


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
    assert len(stored_entries(store)) == 2


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
    assert len(stored_entries(store)) == 2


@pytest.mark.parametrize(
    "statement",
    [
        "CHECKPOINT",
        "FORCE CHECKPOINT",
        "VACUUM",
        "ANALYZE",
        "BEGIN TRANSACTION",
        "CREATE TEMP TABLE scratch AS SELECT * FROM ledger_entries",
        "CREATE TEMP VIEW scratch AS SELECT * FROM ledger_entries",
        "CREATE TEMP MACRO scratch(x) AS x",
    ],
)
def test_what_the_sandbox_lets_run_beyond_queries_leaves_the_store_as_it_was(store, tmp_path, statement):
    """Maintenance statements are no-ops on a read-only file, and temporary objects live in
    the statement's own connection, which closes with it."""
    files_before = folder_state(tmp_path)
    run_readonly_sql(store, statement)
    assert folder_state(tmp_path) == files_before
    with pytest.raises(InvalidStatement, match="scratch"):
        run_readonly_sql(store, "SELECT * FROM scratch")
    assert len(stored_entries(store)) == 2


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
    with pytest.raises(StoreUnavailable, match="no ledger store at"):
        run_readonly_sql(tmp_path / "nowhere.duckdb", "SELECT 1")


def test_a_store_held_by_its_writer_in_another_process_is_unavailable(store):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()",
            str(store),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(StoreUnavailable, match="is open for writing by another process"):
            run_readonly_sql(store, "SELECT 1")
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.mark.parametrize("row_limit", [0, 1_000_001])
def test_a_row_limit_outside_one_to_a_million_is_refused(store, row_limit):
    with pytest.raises(ValueError, match=f"row_limit must be between 1 and 1000000, got {row_limit}"):
        run_readonly_sql(store, "SELECT 1", row_limit=row_limit)
