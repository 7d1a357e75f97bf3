"""Restore benchmark: live state rebuilt from a store of N events, on the embedded broker.

    python -m bench.restore [--events 1000000] [--partitions 4] [--live-events 20000] [--work-dir DIR]

A child process generates the store (not timed) with ``bench.replay.generate``: N usage
events over 30 days from 2026-10-01 (10,000 users, 100 teams, 1,000 keys), their ledger
entries and the budget commands (a store already in ``--work-dir`` is reused: the
restore only reads it; the events are dated, so run it after 2026-10-31, when they are
all in the past). Then the embedded broker and one worker start (no api: a restore is
run with the api stopped), and this process
times, separately, what ``spend-ledger restore --wait`` does: ``plan_s`` (plan_restore on
the store opened read-only), ``publish_s`` (publish_restore) and ``apply_s``
(wait_restored: the worker put every scope in place); ``restore_s`` is their sum.

Worst case: the dedup horizon is the largest the settings allow (400 days), for the plan
and the worker alike, so EVERY stored event id is restored into the dedup index, not only
the last week's.

Checked in the same run: the worker's state of every restored scope equals the plan's
(``differences``, by ``ledger.replay.compare``); then 200 stored events are retried (their
stored fields, priced by the bundled book if they were charged) along with one marker
event per ``usage-by-event`` partition, each charging a scope of its own, all in one
message. A partition's retries are priced in the same step as its marker and reach the
global scope in the same record, so once the global scope has folded input from every
partition, it must hold the restored total plus the markers' cost exactly, and the
restored count plus the markers (``retries_charged`` counts the extra charges).

The baseline of the ratio, in the same run and worker: the live pipeline's throughput on
this machine (``--live-events`` synthetic events in 1,000-event batches, as our producers
send them, timed until the global scope has charged them all). ``refold_estimate_s`` is
what folding the stored events one by one through the worker would take at that rate;
``ratio`` = restore_s / refold_estimate_s. Progress goes to stderr; the last line of
stdout is JSON. Broker, worker and this process share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.live import Watcher, publish, synthetic_events
from bench.replay import generate
from bench.stack import log
from ledger.broker import EmbeddedBroker
from ledger.domain.budgets import BudgetCommand
from ledger.domain.errors import UnpricedModel
from ledger.domain.events import UsageEvent
from ledger.domain.fold import advance
from ledger.domain.pricing import price_event
from ledger.domain.scopes import GLOBAL_SCOPE
from ledger.domain.snapshots import BudgetSnapshot
from ledger.kafka import client_options, ensure_topics
from ledger.pricebooks.genai import genai_prices_book
from ledger.processes import ChildProcess
from ledger.publishing import usage_messages
from ledger.replay.compare import Difference, compare_states
from ledger.replay.service import live_states
from ledger.restore.plan import RestorePlan, plan_restore, plan_summary
from ledger.settings import Settings
from ledger.store.location import store_location
from ledger.store.schema import opened_store
from ledger.topics import topic_names
from streams.codec import partition_of
from streams.restore import publish_restore, wait_restored

DEDUP_HORIZON_S = 400 * 86_400  # the settings' maximum: every stored event id is restored
RETRIES = 200
RETRY_SEED = 7
MARKER_MODEL = "gpt-4o-mini"  # priced by the bundled book; also stands in for an unpriced stored model
MARKER_USAGE = {"prompt_tokens": 1_000, "completion_tokens": 100}
LIVE_BATCH_EVENTS = 1_000
WARM_UP_TIMEOUT_S = 120.0
APPLY_TIMEOUT_S = 1_800.0
MARKERS_TIMEOUT_S = 300.0
DIFFERENCES_LOGGED_MAX = 10


@dataclass(frozen=True, slots=True)
class Timings:
    plan_s: float
    publish_s: float
    apply_s: float


class SnapshotFollower:
    """The last snapshot of a few scopes on ``budget-state``, read from the beginning of
    the partitions that own them."""

    def __init__(self, settings: Settings, scopes: set[str]) -> None:
        self.settings = settings
        self.scopes = {scope.encode() for scope in scopes}
        self.snapshots: dict[str, BudgetSnapshot] = {}
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        topic = topic_names(self.settings.topic_prefix).budget_state
        owners = {partition_of(scope, self.settings.topic_partitions) for scope in self.scopes}
        partitions = [TopicPartition(topic, owner) for owner in sorted(owners)]
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)

    async def wait_until(self, done: Callable[[dict[str, BudgetSnapshot]], bool], what: str, timeout_s: float) -> None:
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while not done(self.snapshots):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            for records in (await self._consumer.getmany(timeout_ms=50, max_records=5_000)).values():
                for record in records:
                    if record.key in self.scopes and record.value is not None:
                        self.snapshots[record.key.decode()] = BudgetSnapshot.model_validate_json(record.value)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def warm_up(settings: Settings, run: str) -> None:
    """Wait until the worker has joined its group and folds: a budget on a scope of the
    benchmark's own (not in the plan), no usage (a restore replaces a scope's state)."""
    scope = f"team:bench-warm-up-{run}"
    command = BudgetCommand.model_validate(
        {"command_id": f"bench-warm-up-{run}", "scope_key": scope, "action": "upsert",
         "issued_at": datetime.now(UTC), "budgets": [{"max_budget_nanos": 10**12}]}
    )  # fmt: skip
    follower = SnapshotFollower(settings, {scope})
    await follower.start()
    try:
        names = topic_names(settings.topic_prefix)
        await publish(settings, names.budget_commands, [(scope.encode(), command.model_dump_json().encode())])
        await follower.wait_until(lambda snapshots: scope in snapshots, "the worker's warm-up", WARM_UP_TIMEOUT_S)
    finally:
        await follower.stop()


def stored_retries(connection: duckdb.DuckDBPyConnection, count: int) -> list[dict[str, Any]]:
    """``count`` stored events chosen at random, in wire shape: what a producer's retry
    would send. A model the bundled book does not price is replaced by one it does, so a
    retry the dedup misses is charged (not dead-lettered) and shows up in the totals."""
    rows = connection.execute(
        f"""
        SELECT event_id, occurred_at, model, provider, user_id, team_id, key_id, end_user, tags, prompt_tokens,
               completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, reported_cost_nanos,
               metadata
        FROM usage_events USING SAMPLE reservoir({count} ROWS) REPEATABLE ({RETRY_SEED})
        """
    ).fetchall()
    book = genai_prices_book()
    retries = []
    for row in rows:
        (event_id, occurred_at, model, provider, user_id, team_id, key_id, end_user, tags) = row[:9]
        prompt, completion, cache_read, cache_write, reasoning, reported_cost_nanos, metadata = row[9:]
        event: dict[str, Any] = {
            "event_id": event_id,
            "occurred_at": occurred_at.isoformat(),
            "model": model,
            "tags": list(tags),
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cache_read_tokens": cache_read,
                "cache_write_tokens": cache_write,
                "reasoning_tokens": reasoning,
            },
        }
        optional = {"provider": provider, "user_id": user_id, "team_id": team_id, "key_id": key_id}
        optional |= {"end_user": end_user, "metadata": None if metadata is None else orjson.loads(metadata)}
        if reported_cost_nanos is not None:
            optional["reported_cost"] = str(Decimal(reported_cost_nanos) / 10**9)
        event |= {name: value for name, value in optional.items() if value is not None}
        try:
            price_event(UsageEvent.model_validate(event), book)
        except UnpricedModel:
            event["model"] = MARKER_MODEL
        retries.append(event)
    return retries


def markers(run: str, partitions: int) -> list[dict[str, Any]]:
    """One fresh event per ``usage-by-event`` partition, each charging a team of its own."""
    found = []
    now = datetime.now(UTC).isoformat()
    for partition in range(partitions):
        n = 0
        while partition_of(f"bench-marker-{run}-{partition}-{n}".encode(), partitions) != partition:
            n += 1
        found.append(
            {"event_id": f"bench-marker-{run}-{partition}-{n}", "occurred_at": now, "model": MARKER_MODEL,
             "team_id": f"bench-marker-{run}-{partition}", "usage": MARKER_USAGE}
        )  # fmt: skip
    return found


def restore_differences(live: dict[str, Any], plan: RestorePlan) -> list[Difference]:
    """``compare_states`` on the restored scopes. Both sides are rolled to one moment read
    after the live state: the worker's timer may have rolled a window (an hour, a day)
    that ended since the plan's ``as_of``."""
    moment = datetime.now(UTC)
    expected = {scope: advance(state, moment)[0] for scope, state in plan.states.items()}
    restored = {scope: state for scope, state in live.items() if scope in plan.states}
    return compare_states(restored, expected, moment)


async def retry_and_mark(
    settings: Settings, plan: RestorePlan, retries: list[dict[str, Any]], run: str
) -> tuple[int, int]:
    """Publish the retries and the markers in one message; wait until every marker is
    charged and the global scope has folded every partition's. Returns the charges beyond
    the markers' on the global scope (0: no retry was charged) and its count then."""
    book = genai_prices_book()
    marked = markers(run, settings.topic_partitions)
    costs = {f"team:{m['team_id']}": price_event(UsageEvent.model_validate(m), book).cost_nanos for m in marked}
    sources = {f"u{partition}" for partition in range(settings.topic_partitions)}
    follower = SnapshotFollower(settings, {GLOBAL_SCOPE, *costs})
    await follower.start()
    try:
        names = topic_names(settings.topic_prefix)
        await publish(settings, names.usage, list(usage_messages([*retries, *marked], len(retries) + len(marked))))

        def done(snapshots: dict[str, BudgetSnapshot]) -> bool:
            charged = all(s in snapshots and snapshots[s].state.total_spend_nanos == c for s, c in costs.items())
            return charged and GLOBAL_SCOPE in snapshots and sources <= snapshots[GLOBAL_SCOPE].applied.keys()

        await follower.wait_until(done, "the markers charged", MARKERS_TIMEOUT_S)
        restored, live = plan.states[GLOBAL_SCOPE], follower.snapshots[GLOBAL_SCOPE].state
    finally:
        await follower.stop()
    extra_entries = live.entry_count - restored.entry_count - len(marked)
    extra_nanos = live.total_spend_nanos - restored.total_spend_nanos - sum(costs.values())
    log(f"global after the retries and {len(marked)} markers: {extra_entries} extra charges, {extra_nanos} extra nanos")
    if extra_entries == 0 and extra_nanos != 0:  # an invariant of the fold, not a retry: surface it
        raise AssertionError(f"the global scope's total is off by {extra_nanos} nanos with no extra charge")
    return extra_entries, live.entry_count


async def worker_events_per_s(settings: Settings, live_events: int, global_count: int, run: str) -> float:
    """The live pipeline's throughput: synthetic events in producer-sized batches, timed
    until the global scope (now at ``global_count`` charges) has charged them all."""
    messages = list(usage_messages(synthetic_events(live_events, seed=1, id_prefix=f"live-{run}"), LIVE_BATCH_EVENTS))
    watcher = Watcher(settings)
    await watcher.start()
    try:
        await watcher.wait(global_count, 0)  # caught up
        started = time.perf_counter()
        await publish(settings, topic_names(settings.topic_prefix).usage, messages)
        await watcher.wait(global_count + live_events, 0)
        return live_events / (time.perf_counter() - started)
    finally:
        await watcher.stop()


def timed_restore(settings: Settings) -> tuple[RestorePlan, Timings, list[dict[str, Any]]]:
    """Plan, publish and wait for the worker, each timed; and the retries to send after."""
    with opened_store(settings, read_only=True) as connection:
        started = time.perf_counter()
        plan = plan_restore(connection, settings, genai_prices_book, on_stage=lambda stage: log(f"plan: {stage}"))
        plan_s = time.perf_counter() - started
        retries = stored_retries(connection, RETRIES)
    log(f"planned in {plan_s:.2f} s: {plan_summary(plan)}")
    started = time.perf_counter()
    records = asyncio.run(publish_restore(settings, plan))
    publish_s = time.perf_counter() - started
    log(f"published {records.total} records ({records.id_messages} of event ids) in {publish_s:.2f} s")
    started = time.perf_counter()
    asyncio.run(wait_restored(settings, plan, APPLY_TIMEOUT_S))
    apply_s = time.perf_counter() - started
    log(f"the worker put {len(plan.states)} scopes in place {apply_s:.2f} s later")
    return plan, Timings(plan_s, publish_s, apply_s), retries


def run(args: argparse.Namespace, settings: Settings, run_id: str) -> dict[str, Any]:
    asyncio.run(warm_up(settings, run_id))
    plan, timings, retries = timed_restore(settings)
    differences = restore_differences(asyncio.run(live_states(settings)), plan)
    for difference in differences[:DIFFERENCES_LOGGED_MAX]:
        log(f"difference: {difference}")
    retries_charged, global_count = asyncio.run(retry_and_mark(settings, plan, retries, run_id))
    events_per_s = asyncio.run(worker_events_per_s(settings, args.live_events, global_count, run_id))
    restore_s = timings.plan_s + timings.publish_s + timings.apply_s
    refold_estimate_s = plan.events / events_per_s
    summary = plan_summary(plan)
    return {
        "bench": "restore",
        "events": plan.events,
        "scopes": summary["scopes"],
        "scopes_with_budgets": summary["scopes_with_budgets"],
        "budget_commands": summary["budget_commands"],
        "event_ids": summary["event_ids"],
        "plan_s": round(timings.plan_s, 2),
        "publish_s": round(timings.publish_s, 2),
        "apply_s": round(timings.apply_s, 2),
        "restore_s": round(restore_s, 2),
        "worker_events_per_s": round(events_per_s),
        "refold_estimate_s": round(refold_estimate_s, 2),
        "ratio": round(restore_s / refold_estimate_s, 4),
        "retries_charged": retries_charged,
        "differences": len(differences),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="usage events in the generated store")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--live-events", type=int, default=20_000, help="events timed through the live pipeline")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and the DuckDB file (default: a new temp dir)"
    )
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.events, args.partitions, args.live_events) < 1:
        parser.error("--events, --partitions and --live-events must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints its JSON as the last line of stdout and returns it."""
    args = parse_args(argv)
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-restore-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(work_dir, 0o755)  # the catalog server may run as another user (ledger.store.catalog_server)
    store = work_dir / "store"
    if args.generate_only:
        generate(store, args.events)
        return {}
    with store_location(Settings(store_path=store)):  # the catalog runs for the whole benchmark
        return _run_with_store(args, work_dir, store)


def _run_with_store(args: argparse.Namespace, work_dir: Path, store: Path) -> dict[str, Any]:
    if (store / "data").exists():  # a store from an earlier run: the plan only reads it
        log(f"reusing {store} ({_size_mib(store)} MiB)")
    else:
        started = time.perf_counter()
        command = [sys.executable, "-m", "bench.restore", "--generate-only", f"--events={args.events}"]
        subprocess.run([*command, f"--work-dir={work_dir}"], check=True, stdout=subprocess.DEVNULL)
        generate_s = time.perf_counter() - started
        log(f"generated {args.events} events in {generate_s:.1f} s ({_size_mib(store)} MiB)")

    run_id = uuid.uuid4().hex[:6]
    broker = EmbeddedBroker(log_path=work_dir / "tansu.log")
    worker: ChildProcess | None = None
    try:
        broker.start()
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=f"bench-{run_id}.",
            topic_partitions=args.partitions,
            dedup_horizon_s=DEDUP_HORIZON_S,
            store_path=store,
            data_dir=work_dir / "data",
        )
        asyncio.run(ensure_topics(settings))
        env = {
            "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SPEND_LEDGER_TOPIC_PREFIX": settings.topic_prefix,
            "SPEND_LEDGER_TOPIC_PARTITIONS": str(args.partitions),
            "SPEND_LEDGER_KAFKA_SESSION_TIMEOUT_S": "2",
            "SPEND_LEDGER_KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
            "SPEND_LEDGER_DEDUP_HORIZON_S": str(DEDUP_HORIZON_S),  # or the worker expires the restored ids
            "SPEND_LEDGER_STORE_PATH": str(store),
            "SPEND_LEDGER_DATA_DIR": str(work_dir / "data"),
        }
        worker = ChildProcess.worker(env, work_dir / "worker.log").start()
        log(f"broker {broker.bootstrap_servers} (pid {broker.pid}), worker pid {worker.pid}")
        result = run(args, settings, run_id)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    log(f"logs in {work_dir}")
    print(json.dumps(result))
    return result


def _size_mib(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) >> 20


if __name__ == "__main__":
    main()
