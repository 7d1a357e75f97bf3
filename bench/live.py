"""Live pipeline benchmark: the embedded broker and one worker process on this machine.

    python -m bench.live [--events 200000] [--single-events 20000] [--partitions 8]

Phase 1 publishes N synthetic events in ``UsageBatch`` messages (as our own producers do;
10,000 users, 500 teams, 2,000 keys, 120,000 end users, 20 models, 5% duplicate
event_ids, 0.5% malformed messages) and times them until every one is accounted for (the
global scope has charged every unique event and every malformed message is in
dead-letter). In the same run a plain aiokafka consumer reads and JSON-decodes the same
messages: the baseline of the ratio. Phase 2 does the same with single-event messages.
Phase 3 publishes at a steady rate, with events that each cross a 1-nano team budget,
and measures publish-to-alert-readable latency: once at 80% of the measured throughput
(capped at the 30,000/s target), and before that at 10% of it (the pipeline's own latency).

The last line printed is JSON. Broker, publisher and worker share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.broker import EmbeddedBroker
from ledger.domain.events import UsageEvent
from ledger.domain.scopes import GLOBAL_SCOPE
from ledger.kafka import client_options, ensure_topics
from ledger.processes import ChildProcess
from ledger.publishing import usage_messages
from ledger.settings import Settings
from ledger.topics import topic_names
from streams.codec import partition_of

MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini", "o4-mini",
    "gpt-3.5-turbo", "gpt-4-turbo", "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022",
    "claude-3-opus-20240229", "claude-sonnet-4-20250514", "claude-opus-4-20250514", "gemini-1.5-pro",
    "gemini-1.5-flash", "gemini-2.0-flash", "gemini-2.5-pro", "gemini-2.5-flash",
]  # fmt: skip
USERS, TEAMS, KEYS, END_USERS = 10_000, 500, 2_000, 120_000
DUPLICATE_SHARE, MALFORMED_SHARE = 0.05, 0.005
WAIT_S_MAX = 900.0
LATENCY_CROSSINGS = 200
LATENCY_SECONDS = 10.0


def synthetic_events(count: int, seed: int, id_prefix: str) -> list[dict[str, Any]]:
    """``count`` distinct priced events with scopes drawn at random."""
    rng = random.Random(seed)
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event_id": f"{id_prefix}-{n}",
            "occurred_at": now,
            "model": rng.choice(MODELS),
            "user_id": f"user-{rng.randrange(USERS)}",
            "team_id": f"team-{rng.randrange(TEAMS)}",
            "key_id": f"key-{rng.randrange(KEYS)}",
            "end_user": f"end-user-{rng.randrange(END_USERS)}",
            "usage": {"prompt_tokens": rng.randrange(10, 4_000), "completion_tokens": rng.randrange(1, 1_000)},
        }
        for n in range(count)
    ]
    for event in events[:10]:
        UsageEvent.model_validate(event)  # fail here, not after minutes of dead letters
    return events


def with_duplicates_and_garbage(
    events: list[dict[str, Any]], seed: int, batch_events: int
) -> tuple[list[tuple[bytes, bytes]], int]:
    """Messages carrying the events, 5% of them again later, and 0.5% malformed
    messages in between; returns the messages and how many are malformed."""
    rng = random.Random(seed)
    stream = list(events)
    for event in rng.sample(events, int(len(events) * DUPLICATE_SHARE)):
        stream.insert(rng.randrange(len(stream) // 2, len(stream) + 1), event)
    messages = list(usage_messages(stream, batch_events))
    malformed = int(len(events) * MALFORMED_SHARE)
    for n in range(malformed):
        messages.insert(rng.randrange(len(messages) + 1), (f"garbage-{n}".encode(), b'{"event_id": "x", "mod'))
    return messages, malformed


def active_scopes(events: list[dict[str, Any]]) -> int:
    scopes = {GLOBAL_SCOPE}
    for event in events:
        scopes.update(
            (
                f"user:{event['user_id']}",
                f"team:{event['team_id']}",
                f"key:{event['key_id']}",
                f"end_user:{event['end_user']}",
            )
        )
    return len(scopes)


class Watcher:
    """Follows the global scope's snapshot and the dead-letter count, with the least
    reading: only the budget-state partition that owns ``global:*``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = topic_names(settings.topic_prefix)
        self.global_count = 0
        self.dead_letters = 0
        self.alerts_seen_at: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self._consumer.start()
        owner = partition_of(GLOBAL_SCOPE.encode(), self.settings.topic_partitions)
        partitions = [TopicPartition(self.names.budget_state, owner)]
        partitions += [TopicPartition(self.names.dead_letter, p) for p in range(self.settings.topic_partitions)]
        partitions += [TopicPartition(self.names.budget_alerts, p) for p in range(self.settings.topic_partitions)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)

    async def poll(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=50, max_records=5_000)
        now = time.perf_counter()
        for tp, records in batches.items():
            if tp.topic == self.names.dead_letter:
                self.dead_letters += len(records)
            elif tp.topic == self.names.budget_alerts:
                for record in records:
                    alert = orjson.loads(record.value)
                    self.alerts_seen_at.setdefault(alert["trigger_id"], now)
            else:
                for record in records:
                    if record.key == GLOBAL_SCOPE.encode():
                        self.global_count = orjson.loads(record.value)["state"]["entry_count"]

    async def wait(self, global_count: int, dead_letters: int) -> None:
        deadline = time.perf_counter() + WAIT_S_MAX
        while self.global_count < global_count or self.dead_letters < dead_letters:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"accounted {self.global_count}/{global_count}, {self.dead_letters}/{dead_letters}")
            await self.poll()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def publish(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=5, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def raw_consume_events_per_s(settings: Settings, topic: str, message_count: int) -> float:
    """The baseline: a plain aiokafka consumer reading and JSON-decoding the messages."""
    consumer = AIOKafkaConsumer(
        topic, **client_options(settings), group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        events = messages = 0
        started = time.perf_counter()
        while messages < message_count:
            for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                for record in records:
                    messages += 1
                    try:
                        body = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue
                    events += len(body["events"]) if "batch_id" in body else 1
        return events / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def alert_latency(settings: Settings, watcher: Watcher, rate_per_s: float, run: str) -> list[float]:
    """Publish at ``rate_per_s`` for a while; some events cross a 1-nano team budget.
    Returns each crossing's publish-to-alert-readable latency in ms."""
    names = topic_names(settings.topic_prefix)
    issued = datetime.now(UTC).isoformat()
    commands = [
        (
            f"team:{run}-{n}".encode(),
            orjson.dumps(
                {
                    "command_id": f"{run}-cmd-{n}",
                    "scope_key": f"team:{run}-{n}",
                    "action": "upsert",
                    "issued_at": issued,
                    "budgets": [{"max_budget_nanos": 1}],
                }
            ),
        )
        for n in range(LATENCY_CROSSINGS)
    ]
    await publish(settings, names.budget_commands, commands)
    await asyncio.sleep(3)  # let the budgets land before the traffic

    ticks_per_s = 50
    total = int(rate_per_s * LATENCY_SECONDS)
    per_tick = max(1, total // int(LATENCY_SECONDS * ticks_per_s))
    background = synthetic_events(total, seed=7, id_prefix=f"{run}-bg")
    crossing_at = set(random.Random(3).sample(range(0, total, per_tick), LATENCY_CROSSINGS))
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=1, max_request_size=16 * 1024 * 1024)
    await producer.start()
    published_at: dict[str, float] = {}
    crossing_number = 0
    try:
        started = time.perf_counter()
        for tick, start in enumerate(range(0, total, per_tick)):
            chunk = background[start : start + per_tick]
            if start in crossing_at:
                event = dict(chunk[0], event_id=f"{run}-cross-{crossing_number}", team_id=f"{run}-{crossing_number}")
                chunk = [event, *chunk[1:]]
                published_at[event["event_id"]] = time.perf_counter()
                crossing_number += 1
            for key, value in usage_messages(chunk):
                await producer.send(names.usage, value, key=key)
            await watcher.poll()
            delay = started + (tick + 1) / ticks_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()
    deadline = time.perf_counter() + 60
    while len([e for e in published_at if e in watcher.alerts_seen_at]) < len(published_at):
        if time.perf_counter() > deadline:
            break
        await watcher.poll()
    return [(watcher.alerts_seen_at[e] - t) * 1_000 for e, t in published_at.items() if e in watcher.alerts_seen_at]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def _p(values: list[float], share: float) -> float | None:
    """The ``share`` percentile of ``values`` in ms, rounded; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


async def run(args: argparse.Namespace, settings: Settings, worker: ChildProcess) -> dict[str, Any]:
    names = topic_names(settings.topic_prefix)
    watcher = Watcher(settings)
    await watcher.start()
    try:
        # Warm up: the clock starts once the worker has joined its group and charged an event.
        await publish(settings, names.usage, list(usage_messages(synthetic_events(1, seed=0, id_prefix="warm-up"))))
        await watcher.wait(1, 0)
        batched = synthetic_events(args.events, seed=1, id_prefix="b")
        messages, malformed = with_duplicates_and_garbage(batched, seed=1, batch_events=1_000)
        started = time.perf_counter()
        await publish(settings, names.usage, messages)
        published_s = time.perf_counter() - started
        await watcher.wait(1 + len(batched), malformed)
        events_per_s = len(batched) / (time.perf_counter() - started)
        raw_per_s = await raw_consume_events_per_s(settings, names.usage, len(messages))
        summary = f"batched: {events_per_s:,.0f} events/s (published in {published_s:.1f} s); raw {raw_per_s:,.0f}/s"
        print(summary, flush=True)

        singles = synthetic_events(args.single_events, seed=2, id_prefix="s")
        single_messages, single_malformed = with_duplicates_and_garbage(singles, seed=2, batch_events=1)
        started = time.perf_counter()
        await publish(settings, names.usage, single_messages)
        await watcher.wait(1 + len(batched) + len(singles), malformed + single_malformed)
        single_per_s = len(singles) / (time.perf_counter() - started)
        print(f"single-event messages: {single_per_s:,.0f} events/s", flush=True)

        light_rate = 0.1 * events_per_s  # first, while no backlog is left from a loaded run
        light = await alert_latency(settings, watcher, light_rate, run="light")
        rate = min(30_000.0, 0.8 * events_per_s)
        latencies = await alert_latency(settings, watcher, rate, run="loaded")
        print(f"alerts measured: {len(latencies)} at {rate:,.0f}/s, {len(light)} at {light_rate:,.0f}/s", flush=True)
        rss = peak_rss_mb(worker.pid or 0)
        return {
            "events": args.events,
            "active_scopes": active_scopes(batched) + active_scopes(singles) - 1,
            "partitions": settings.topic_partitions,
            "events_per_s": round(events_per_s),
            "raw_consume_per_s": round(raw_per_s),
            "ratio": round(events_per_s / raw_per_s, 4),
            "single_events_per_s": round(single_per_s),
            "alert_load_events_per_s": round(rate),
            "alerts_measured": len(latencies),
            "alert_p50_ms": _p(latencies, 0.5),
            "alert_p99_ms": _p(latencies, 0.99),
            "light_load_events_per_s": round(light_rate),
            "light_alert_p50_ms": _p(light, 0.5),
            "light_alert_p99_ms": _p(light, 0.99),
            "worker_peak_rss_mb": round(rss, 1),
        }
    finally:
        await watcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--single-events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    with EmbeddedBroker(log_path=log_dir / "tansu.log") as broker:
        prefix = f"bench-{uuid.uuid4().hex[:6]}."
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, topic_partitions=args.partitions
        )
        asyncio.run(ensure_topics(settings))
        env = {
            "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SPEND_LEDGER_TOPIC_PREFIX": prefix,
            "SPEND_LEDGER_TOPIC_PARTITIONS": str(args.partitions),
            "SPEND_LEDGER_KAFKA_SESSION_TIMEOUT_S": "2",
            "SPEND_LEDGER_DATA_DIR": str(log_dir / "data"),
        }
        with ChildProcess.worker(env, log_dir / "worker.log") as worker:
            result = asyncio.run(run(args, settings, worker))
    print(f"logs in {log_dir}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
