"""Replay benchmark: a full replay of a large store under a changed price book.

    python -m bench.replay [--events 10000000] [--store FOLDER]

A child process generates the store (not timed): N usage events over 30 days (20 models
of the bundled book, 10,000 users, 100 teams, 1,000 keys, a tag on a quarter of them),
one ledger entry per event as the worker would have written it, and budget commands (a
daily and a monthly budget on global, daily and hourly ones on every team, a daily one on
200 users, a weekly one in another time zone on 50 keys, with resets and limit changes).
The raw JSON column holds a short stand-in, not a full event: the replay never reads it.

The store is a lake (its embedded catalog server runs for the benchmark, started by this
process). This process then times, on the same store, a plain scan of the events (the baseline of
the ratio) and the full replay under the bundled book with a negotiated override (every
event priced, every budget's windows, spend and crossings). Peak RSS is this process's
(the generator runs in its own). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb

from bench.live import MODELS as LIVE_MODELS
from ledger.domain.budgets import BudgetCommand
from ledger.domain.prices import PriceOverride, TokenRates
from ledger.pricebooks.genai import genai_prices_book
from ledger.replay.engine import ReplayOptions, replay
from ledger.settings import Settings
from ledger.store.location import StoreLocation, store_location
from ledger.store.records import USAGE_COLUMNS, StoreRows, command_row
from ledger.store.schema import open_store
from ledger.store.writer import append

MODELS = [*LIVE_MODELS[:-1], "deepseek-chat"]  # deepseek-chat has two price periods in the bundled book
START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30


# The columns generate() fills, named: a column added to the store later stays NULL here.
GENERATED_COLUMNS = USAGE_COLUMNS[: USAGE_COLUMNS.index("received_at") + 1]


def generate(folder: Path, events: int) -> None:
    """Fill a fresh store: events, their ledger entries, budget commands."""
    with store_location(Settings(store_path=folder)) as store:
        connection = open_store(store)
        _fill(connection, events)
        connection.close()


def _fill(connection: duckdb.DuckDBPyConnection, events: int) -> None:
    models = "[" + ", ".join(f"'{model}'" for model in MODELS) + "]"
    span_us = DAYS * 86_400 * 1_000_000
    connection.execute(
        f"""
        INSERT INTO usage_events ({", ".join(GENERATED_COLUMNS)})
        SELECT 'ev-' || i, TIMESTAMPTZ '{START.isoformat()}' + to_microseconds(CAST(hash(i) % {span_us} AS BIGINT)),
               {models}[1 + CAST(hash(i * 7) % {len(MODELS)} AS INTEGER)], NULL,
               'user-' || hash(i * 3) % 10000, 'team-' || hash(i * 5) % 100, 'key-' || hash(i * 11) % 1000, NULL,
               CASE WHEN i % 4 = 0 THEN ['prod'] ELSE [] END,
               ['global:*', 'user:user-' || hash(i * 3) % 10000, 'team:team-' || hash(i * 5) % 100,
                'key:key-' || hash(i * 11) % 1000] || CASE WHEN i % 4 = 0 THEN ['tag:prod'] ELSE [] END,
               100 + hash(i * 13) % 8000, hash(i * 17) % 1500, CASE WHEN i % 3 = 0 THEN 64 ELSE 0 END, 0,
               0, true, false, NULL, '{{"event_id":"ev-' || i || '"}}', CAST(i % 8 AS INTEGER), i, NULL
        FROM range({events}) t(i)
        """
    )
    connection.execute(
        """
        INSERT INTO ledger_entries
        SELECT event_id, event_id, 'charge', occurred_at, model, NULL, NULL, scope_keys,
               prompt_tokens * 150 + completion_tokens * 600, 'price_book', 'sha256:generated',
               prompt_tokens, completion_tokens, false, 'usage/' || source_partition || '/' || source_offset
        FROM usage_events
        """
    )
    commands = list(_commands())
    rows = StoreRows()
    for offset, command in enumerate(commands):
        row = command_row(command.model_dump_json().encode(), 0, offset)
        assert row is not None
        rows.tables["budget_commands"].append(row)
    append(connection, rows, {})


def _commands() -> list[BudgetCommand]:
    def upsert(scope: str, at: datetime, *budgets: dict[str, object]) -> BudgetCommand:
        return BudgetCommand.model_validate(
            {"command_id": f"c-{scope}-{at.isoformat()}", "scope_key": scope, "action": "upsert",
             "issued_at": at, "budgets": list(budgets)}
        )  # fmt: skip

    before = START - timedelta(days=1)
    commands = [
        upsert("global:*", before, {"duration": "1d", "max_budget_nanos": 5 * 10**12},
               {"duration": "monthly", "max_budget_nanos": 10**14, "soft_budget_nanos": 8 * 10**13}),
    ]  # fmt: skip
    for team in range(100):
        commands.append(
            upsert(f"team:team-{team}", before, {"duration": "1d", "max_budget_nanos": 5 * 10**10},
                   {"duration": "1h", "max_budget_nanos": 10**9, "soft_budget_nanos": 8 * 10**8})
        )  # fmt: skip
        if team % 10 == 0:  # a limit change mid-month, and a reset
            middle = START + timedelta(days=12, hours=team % 24)
            commands.append(upsert(f"team:team-{team}", middle, {"duration": "1d", "max_budget_nanos": 10**10},
                                   {"duration": "1h", "max_budget_nanos": 3 * 10**9}))  # fmt: skip
            commands.append(
                BudgetCommand(
                    command_id=f"reset-{team}", scope_key=f"team:team-{team}", action="reset",
                    issued_at=middle + timedelta(days=3),
                )
            )  # fmt: skip
    for user in range(0, 10_000, 50):
        commands.append(upsert(f"user:user-{user}", before, {"duration": "1d", "max_budget_nanos": 2 * 10**8}))
    for key in range(0, 1_000, 20):
        commands.append(
            upsert(f"key:key-{key}", before, {"duration": "weekly", "timezone": "America/New_York",
                                                "week_start": 6, "max_budget_nanos": 10**10})
        )  # fmt: skip
    return commands


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument(
        "--store", type=Path, help="store folder to create, or to reuse if it exists (default: temporary)"
    )
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        generate(args.store, args.events)
        return

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        os.chmod(folder, 0o755)  # the catalog server may run as another user (ledger.store.catalog_server)
        path = args.store or Path(folder) / "store"
        reused = path.exists()
        with store_location(Settings(store_path=path)) as store:
            if reused:
                print(f"reusing {path} ({_size_mib(path):.0f} MiB)")
            else:
                started = time.perf_counter()
                generator = [sys.executable, "-m", "bench.replay", "--generate-only", f"--events={args.events}"]
                subprocess.run([*generator, f"--store={path}"], check=True)
                generate_s = time.perf_counter() - started
                print(f"generated {args.events} events in {generate_s:.1f} s ({_size_mib(path):.0f} MiB)")
            _time_replay(store)


def _size_mib(folder: Path) -> float:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) / 2**20


def _time_replay(store: StoreLocation) -> None:
    """Time a plain scan, then the full replay; print the JSON line."""
    book = genai_prices_book().with_overrides(
        (PriceOverride(model="gpt-4o-mini", rates=TokenRates(input_mtok=Decimal("0.12"), output_mtok=Decimal(1))),),
        source="negotiated",
    )
    connection = open_store(store, read_only=True)
    started = time.perf_counter()
    (tokens,) = connection.execute("SELECT sum(prompt_tokens + completion_tokens) FROM usage_events").fetchall()[0]
    scan_s = time.perf_counter() - started

    stages: dict[str, float] = {}
    last = [time.perf_counter(), ""]

    def on_stage(stage: str) -> None:
        now = time.perf_counter()
        if last[1]:
            stages[str(last[1])] = round(now - float(last[0]), 2)
        last[0], last[1] = now, stage

    as_of = START + timedelta(days=DAYS)
    started = time.perf_counter()
    result = replay(connection, ReplayOptions(book=book, as_of=as_of), on_stage)
    replay_s = time.perf_counter() - started
    on_stage("")
    connection.close()
    print(f"stages (s): {stages}; scopes {len(result.states)}, crossings {result.crossing_count}, tokens {tokens}")
    print(
        json.dumps(
            {
                "events": result.events,
                "replay_s": round(replay_s, 2),
                "events_per_s": round(result.events / replay_s),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "scan_s": round(scan_s, 3),
                "ratio_to_scan": round(replay_s / scan_s, 1),
                "charged": result.charged,
                "scopes": len(result.states),
                "crossings": result.crossing_count,
            }
        )
    )


if __name__ == "__main__":
    main()
