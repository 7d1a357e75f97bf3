"""`spend-ledger spend ...` and `spend-ledger sql` as a user runs them, on a real store file."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from ledger.cli.main import app
from ledger.domain.budgets import BudgetSpec
from ledger.store.records import StoreRows, usage_rows
from ledger.store.schema import open_store
from ledger.store.writer import append
from tests.stores import lake_at, store_env
from tests.unit.store_rows import at, build_store, command, dead_letter, entry

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> dict[str, str]:
    """The environment that points the CLI at a small store."""
    path = build_store(
        lake_at(tmp_path),
        entries=[
            entry(1_000_000_001, "user:alice", "team:ml", model="gpt-4o", occurred_at=at(9)),
            entry(250_000_000, "user:bob", "team:ml", model="gpt-4o-mini", occurred_at=at(10)),
            entry(3, "user:bob", "team:web", model="gpt-4o", occurred_at=at(11)),
        ],
        commands=[command("team:ml", "upsert", at(9, 30), BudgetSpec(max_budget_nanos=2_000_000_000, duration="1d"))],
        dead_letters=[dead_letter("t.usage", "price", "unpriced", "no price for model 'x'", "e-9", offset=4)],
    )
    return store_env(path)


def test_spend_by_team_and_model_as_json_gives_nanos_and_exact_usd(store):
    result = runner.invoke(app, ["spend", "by", "--group-by", "team", "--group-by", "model", "--json"], env=store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "team": "ml",
            "model": "gpt-4o",
            "spend_nanos": 1_000_000_001,
            "spend_usd": "1.000000001",
            "entry_count": 1,
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
        {
            "team": "ml",
            "model": "gpt-4o-mini",
            "spend_nanos": 250_000_000,
            "spend_usd": "0.25",
            "entry_count": 1,
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
        {
            "team": "web",
            "model": "gpt-4o",
            "spend_nanos": 3,
            "spend_usd": "0.000000003",
            "entry_count": 1,
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
    ]


def test_spend_by_hour_over_a_range_as_csv_reads_times_as_utc(store):
    args = ["spend", "by", "-g", "hour", "--from", "2025-11-03T10:00", "--to", "2025-11-03T12:00:00+01:00", "--csv"]
    result = runner.invoke(app, args, env=store)
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        [
            *("hour", "spend_nanos", "spend_usd", "entry_count", "prompt_tokens", "completion_tokens"),
            *("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"),
        ],
        ["2025-11-03T10:00:00+00:00", "250000000", "0.25", "1", "100", "10", "0", "0", "0"],
    ]


def test_spend_top_prints_a_table_in_usd(store):
    result = runner.invoke(app, ["spend", "top", "--kind", "user", "--limit", "1"], env=store)
    assert result.exit_code == 0, result.output
    assert "user:alice" in result.stdout
    assert "1.000000001" in result.stdout
    assert "user:bob" not in result.stdout


def test_spend_budgets_and_dead_letters_as_json(store):
    budgets = runner.invoke(app, ["spend", "budgets", "--json"], env=store)
    assert budgets.exit_code == 0, budgets.output
    (limit,) = json.loads(budgets.stdout)
    assert (limit["scope_key"], limit["limit_name"], limit["max_budget_nanos"], limit["max_budget_usd"]) == (
        "team:ml",
        "1d",
        2_000_000_000,
        "2",
    )
    assert (limit["total_spend_nanos"], limit["spend_since_last_command_nanos"]) == (1_250_000_001, 250_000_000)
    letters = runner.invoke(app, ["spend", "dead-letters", "--json"], env=store)
    assert letters.exit_code == 0, letters.output
    assert [(g["reason"], g["count"], g["example_event_id"]) for g in json.loads(letters.stdout)] == [
        ("unpriced", 1, "e-9")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spend", "by", "--group-by", "weekday"], "cannot group by 'weekday'; accepted: scope, user"),
        (["spend", "top", "--kind", "team", "--from", "last week"], "--from 'last week' is not an ISO 8601 time"),
        (["spend", "by", "--from", "2025-11-04", "--to", "2025-11-03"], "'from' (2025-11-04T00:00:00+00:00) must be"),
        (["spend", "top", "--kind", "global"], "unknown scope kind 'global'; expected one of: user, team"),
        (["spend", "dead-letters", "--json", "--csv"], "choose one of --json and --csv"),
        (["spend", "by", "--window", "fortnight"], "unknown window 'fortnight'; expected one of: hour, day, week"),
        (["spend", "by", "--window", "day", "--tz", "Mars/Olympus_Mons"], "unknown time zone 'Mars/Olympus_Mons'"),
    ],
)
def test_spend_errors_exit_2_with_what_to_fix(store, args, message):
    result = runner.invoke(app, args, env=store)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())  # Rich wraps long lines


def test_a_missing_store_exits_2_naming_it(tmp_path):
    missing = lake_at(tmp_path / "none")
    result = runner.invoke(app, ["spend", "budgets"], env={**store_env(missing), "COLUMNS": "1000"})
    assert result.exit_code == 2
    assert f"error: nothing stored yet in {missing}: start the api" in " ".join(result.stderr.split())


def test_sql_prints_rows_and_refuses_writes_with_exit_2(store):
    statement = "SELECT model, sum(cost_nanos) AS spend_nanos FROM ledger_entries GROUP BY model ORDER BY model"
    result = runner.invoke(app, ["sql", statement, "--json"], env=store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"model": "gpt-4o", "spend_nanos": 1_000_000_004},
        {"model": "gpt-4o-mini", "spend_nanos": 250_000_000},
    ]
    refused = runner.invoke(app, ["sql", "DELETE FROM ledger_entries"], env=store)
    assert refused.exit_code == 2
    assert "writing is not allowed: only a query" in refused.stderr
    assert json.loads(
        runner.invoke(app, ["sql", "SELECT count(*) AS n FROM ledger_entries", "--json"], env=store).stdout
    ) == [{"n": 3}]


def test_sql_says_on_stderr_when_rows_were_cut(store):
    result = runner.invoke(app, ["sql", "SELECT range AS n FROM range(5)", "--limit", "2", "--csv"], env=store)
    assert result.exit_code == 0, result.output
    assert result.stdout == "n\n0\n1\n"
    assert "only the first 2 rows are shown" in result.stderr


def test_spend_by_model_group_names_the_group_its_usage_events_asked_for(tmp_path):
    charge = entry(7, "team:ml", model="gpt-4o", occurred_at=at(9))
    path = build_store(lake_at(tmp_path), entries=[charge])
    event = {"event_id": charge["event_id"], "occurred_at": at(9).isoformat(), "model": "gpt-4o",
             "model_group": "team-gpt", "usage": {"prompt_tokens": 100, "completion_tokens": 10}}  # fmt: skip
    rows = StoreRows()
    rows.tables["usage_events"].extend(usage_rows(orjson.dumps({"batch_id": "b", "events": [event]}), 0, 1, len))
    connection = open_store(path)
    try:
        append(connection, rows, {})
    finally:
        connection.close()
    result = runner.invoke(app, ["spend", "by", "-g", "model_group", "-g", "model", "--json"], env=store_env(path))
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["model_group"], row["model"], row["spend_nanos"]) == ("team-gpt", "gpt-4o", 7)


def test_spend_by_day_windows_in_new_york_across_the_fall_back_change(tmp_path):
    day_start = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    path = build_store(
        lake_at(tmp_path),
        entries=[entry(1, "team:ml", occurred_at=day_start + timedelta(minutes=30, hours=n)) for n in range(25)]
        + [entry(5, "team:web", occurred_at=day_start)],
    )
    args = ["spend", "by", "--window", "day", "--tz", "America/New_York", "--team", "ml", "--json"]
    result = runner.invoke(app, args, env=store_env(path))
    assert result.exit_code == 0, result.output
    (day,) = json.loads(result.stdout)
    assert (day["window_start"], day["window_end"]) == ("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00")
    assert (day["spend_nanos"], day["entry_count"]) == (25, 25)
    hourly = ["spend", "by", "--window", "hour", "--tz", "America/New_York", "--from", "2026-11-01", "--to",
              "2026-11-02", "--team", "ml", "--team", "web", "--csv"]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, hourly, env=store_env(path)).stdout)))
    assert len(rows) == 25  # --from and --to without a zone are read in --tz
    assert [row["window_start"] for row in rows[1:3]] == ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
    assert (rows[0]["spend_nanos"], rows[0]["entry_count"]) == ("6", "2")


def test_spend_by_filters_and_shows_cache_and_reasoning_tokens(tmp_path):
    charge = entry(7, "team:ml", "user:ana", model="gpt-4o", occurred_at=at(9), prompt=1_000, completion=300)
    path = build_store(lake_at(tmp_path), entries=[charge, entry(9, "team:ml", "user:bo", occurred_at=at(9))])
    usage = {"prompt_tokens": 1_000, "completion_tokens": 300, "cache_read_tokens": 600, "cache_write_tokens": 100,
             "reasoning_tokens": 200}  # fmt: skip
    event = {"event_id": charge["event_id"], "occurred_at": at(9).isoformat(), "model": "gpt-4o", "usage": usage}
    rows = StoreRows()
    rows.tables["usage_events"].extend(usage_rows(orjson.dumps({"batch_id": "b", "events": [event]}), 0, 1, len))
    connection = open_store(path)
    try:
        append(connection, rows, {})
    finally:
        connection.close()
    args = ["spend", "by", "-g", "user", "--user", "ana", "--model", "gpt-4o", "--json"]
    result = runner.invoke(app, args, env=store_env(path))
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["user"], row["spend_nanos"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        "ana",
        7,
        600,
        100,
    )
    assert row["reasoning_tokens"] == 200
