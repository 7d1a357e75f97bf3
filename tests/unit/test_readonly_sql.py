"""Ad-hoc SQL: each refusal checked against a real DuckDB file, which stays unchanged."""

from __future__ import annotations

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
        ("ATTACH ':memory:' AS scratch", NOT_WRITING),
        ("COPY ledger_entries TO '{dir}/out.csv'", NOT_EXTERNAL),
        ("COPY ledger_entries FROM '{dir}/in.csv'", NOT_EXTERNAL),
        ("SELECT * FROM read_csv('{dir}/in.csv')", NOT_EXTERNAL),
        ("SELECT * FROM '{dir}/in.csv'", NOT_EXTERNAL),
        ("SELECT * FROM read_parquet('{dir}/in.parquet')", NOT_EXTERNAL),
        ("SELECT * FROM read_text('/etc/hostname')", NOT_EXTERNAL),
        ("ATTACH '{dir}/other.duckdb' AS other", NOT_EXTERNAL),
        ("INSTALL httpfs", NOT_EXTERNAL),
        ("LOAD httpfs", NOT_EXTERNAL),
        ("SET enable_external_access = true", NOT_SETTING),
        ("SET lock_configuration = false", NOT_SETTING),
        ("RESET lock_configuration", NOT_SETTING),
    ],
)
def test_a_statement_that_writes_reads_files_attaches_or_loads_is_refused(store, tmp_path, statement, headline):
    (tmp_path / "in.csv").write_text("a\n1\n")
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    before = stored_entries(store)
    with pytest.raises(StatementNotAllowed) as refused:
        run_readonly_sql(store, statement.format(dir=tmp_path))
    message = str(refused.value)
    assert message.startswith(headline)
    assert "DuckDB said: " in message  # DuckDB's own words follow ours
    assert stored_entries(store) == before
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()


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
