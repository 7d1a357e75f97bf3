"""``spend-ledger replay`` on a store file: budgets as of a time, a book from a file, and
clear refusals."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
from typer.testing import CliRunner

from ledger.cli.main import app
from ledger.domain.prices import PriceBook, PriceOverride, TokenRates
from ledger.store.records import StoreRows, command_row, usage_rows
from ledger.store.schema import open_store
from ledger.store.writer import append
from tests.stores import lake_at, store_env

runner = CliRunner()
BOOK = PriceBook(source="cli test", overrides=(PriceOverride(model="m-1", rates=TokenRates(input_mtok=Decimal(1))),))


def store_with_a_day_of_usage(tmp_path: Path) -> dict[str, str]:
    rows = StoreRows()
    for hour in range(3):
        event = {
            "event_id": f"e{hour}",
            "occurred_at": f"2025-11-03T{hour + 9:02d}:00:00Z",
            "model": "m-1",
            "team_id": "ml",
            "usage": {"prompt_tokens": 1_000_000},
        }
        rows.tables["usage_events"].extend(usage_rows(orjson.dumps(event), 0, hour, len))
    command = {
        "command_id": "c1",
        "scope_key": "team:ml",
        "action": "upsert",
        "issued_at": "2025-11-03T00:00:00Z",
        "budgets": [{"duration": "daily", "max_budget_nanos": 1_500_000_000}],
    }
    row = command_row(orjson.dumps(command), 0, 0)
    assert row is not None
    rows.tables["budget_commands"].append(row)
    path = lake_at(tmp_path)
    connection = open_store(path)
    append(connection, rows, {})
    connection.close()
    (tmp_path / "book.json").write_text(BOOK.model_dump_json())
    return store_env(path)


def test_as_of_prints_every_budget_at_that_time_under_the_given_book(tmp_path: Path) -> None:
    env = store_with_a_day_of_usage(tmp_path)
    book = str(tmp_path / "book.json")
    early = runner.invoke(app, ["replay", "--prices", book, "--as-of", "2025-11-03T10:30:00Z"], env=env)
    assert early.exit_code == 0, early.output
    assert "2 charged, 0 unpriced" in early.output
    assert "team:ml" in early.output
    late = runner.invoke(app, ["replay", "--prices", book, "--as-of", "2025-11-03T23:00:00Z"], env=env)
    assert "3 charged" in late.output
    assert "exceeded" in late.output


def test_apply_with_as_of_and_a_missing_book_are_refused(tmp_path: Path) -> None:
    env = store_with_a_day_of_usage(tmp_path)
    both = runner.invoke(app, ["replay", "--apply", "--as-of", "2025-11-03T10:00:00Z"], env=env)
    assert both.exit_code == 2
    assert "does not go with --as-of" in " ".join(both.output.split())
    missing = runner.invoke(app, ["replay", "--prices", str(tmp_path / "nope.json"), "--as-of", "2025-11-04"], env=env)
    assert missing.exit_code == 2
    assert "cannot use --prices" in " ".join(missing.output.split())
