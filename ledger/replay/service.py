"""Replay as the CLI (and later the api) runs it: against the store and the live topics.

``replay_store`` computes the replay; ``live_states`` reads what the worker holds now
(the compacted ``budget-state`` topic); ``check_equality`` compares the two;
``apply_replay`` publishes the adjustments that make live equal the replay, refusing
when the store lags the topics (a stale store would correct twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.domain.adjustments import LedgerAdjustment, adjustment_id
from ledger.domain.budgets import BudgetState
from ledger.domain.prices import PriceBook, load_price_book
from ledger.domain.snapshots import BudgetSnapshot
from ledger.kafka import client_options, end_offsets
from ledger.publishing import usage_messages
from ledger.replay.compare import Difference, compare_states
from ledger.replay.engine import ReplayOptions, ReplayResult, replay
from ledger.settings import Settings
from ledger.store.projector import input_topics
from ledger.topics import topic_names

READ_TIMEOUT_S = 60.0
ADJUSTMENTS_PER_MESSAGE = 1_000
PRODUCER_REQUEST_BYTES_MAX = 16 * 1024 * 1024


class StoreBehind(Exception):
    """The store has not read the topics to their end: a replay applied now would
    correct from stale charges."""


def current_book(connection: duckdb.DuckDBPyConnection, default: Callable[[], PriceBook]) -> PriceBook:
    """The book the worker prices with: the last one published, else the bundled one."""
    row = connection.execute("SELECT book FROM price_books ORDER BY source_offset DESC LIMIT 1").fetchall()
    return load_price_book(row[0][0]) if row else default()


def default_as_of(connection: duckdb.DuckDBPyConnection, now: datetime) -> datetime:
    """Now, or the latest event time if an event claims a later one (clocks skew)."""
    (latest,) = connection.execute("SELECT max(occurred_at) FROM usage_events").fetchall()[0]
    return now if latest is None else max(now, latest)


def replay_store(
    connection: duckdb.DuckDBPyConnection,
    book: PriceBook,
    as_of: datetime,
    settings: Settings,
    *,
    scopes: tuple[str, ...] = (),
    reprice_from: datetime | None = None,
    reprice_to: datetime | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> ReplayResult:
    """The replay of the store under ``book`` at ``as_of`` (see ``ReplayOptions``)."""
    options = ReplayOptions(
        book=book,
        as_of=as_of,
        trust_reported_cost=settings.trust_reported_cost,
        scopes=scopes,
        reprice_from=reprice_from,
        reprice_to=reprice_to,
    )
    return replay(connection, options, on_stage)


async def live_states(settings: Settings) -> dict[str, BudgetState]:
    """Every scope's live state: the last snapshot per key on ``budget-state``."""
    topic = topic_names(settings.topic_prefix).budget_state
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await end_offsets(settings, partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        latest: dict[bytes, bytes | None] = {}
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT_S
        while remaining:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {READ_TIMEOUT_S} s")
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key is not None:
                        latest[record.key] = record.value
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return {key.decode(): BudgetSnapshot.model_validate_json(value).state for key, value in latest.items() if value}


async def store_lag(settings: Settings, connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Records per input topic that the store has not read yet."""
    stored = {
        (topic, partition): offset
        for topic, partition, offset in connection.execute(
            "SELECT topic, kafka_partition, next_offset FROM consumer_offsets"
        ).fetchall()
    }
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        names = input_topics(topic_names(settings.topic_prefix))
        partitions = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
    finally:
        await consumer.stop()
    lag: dict[str, int] = {}
    for tp, end in (await end_offsets(settings, partitions)).items():
        behind = end - stored.get((tp.topic, tp.partition), 0)
        if behind > 0:
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
    return lag


async def check_equality(
    settings: Settings, connection: duckdb.DuckDBPyConnection, book: PriceBook, now: datetime | None = None
) -> tuple[ReplayResult, list[Difference]]:
    """Replay the store under ``book`` and compare it with live state now."""
    as_of = default_as_of(connection, now or datetime.now(UTC))
    result = replay_store(connection, book, as_of, settings)
    return result, compare_states(await live_states(settings), result.states, as_of)


def planned_adjustments(connection: duckdb.DuckDBPyConnection, result: ReplayResult) -> list[LedgerAdjustment]:
    """The corrections that make each replayed event's charges equal its replayed cost
    (read from the ``replay_costs`` the replay left in ``connection``)."""
    rows = connection.execute(
        """
        WITH charged AS (
            SELECT event_id, sum(cost_nanos)::BIGINT AS charged_nanos FROM ledger_entries GROUP BY event_id
        )
        SELECT e.event_id, e.occurred_at, e.model, e.provider, e.scope_keys, c.cost_nanos,
               coalesce(ch.charged_nanos, 0)
        FROM replay_costs c JOIN replay_events e USING (row_id) LEFT JOIN charged ch ON ch.event_id = e.event_id
        WHERE c.cost_nanos IS NOT NULL AND c.cost_nanos != coalesce(ch.charged_nanos, 0)
        ORDER BY e.occurred_at, e.event_id
        """
    ).fetchall()
    return [
        LedgerAdjustment(
            adjustment_id=adjustment_id(event_id, charged, target, result.book_version),
            event_id=event_id,
            occurred_at=occurred_at,
            model=model,
            provider=provider,
            scope_keys=tuple(scope_keys),
            cost_nanos=target - charged,
            price_book_version=result.book_version,
        )
        for event_id, occurred_at, model, provider, scope_keys, target, charged in rows
    ]


@dataclass(frozen=True, slots=True)
class Applied:
    adjustments: int
    net_nanos: int


async def apply_replay(settings: Settings, connection: duckdb.DuckDBPyConnection, result: ReplayResult) -> Applied:
    """Publish the adjustments of ``result`` to ``usage``, after checking the store has
    read every topic to its end; waits for the broker's acknowledgements."""
    lag = await store_lag(settings, connection)
    if lag:
        behind = ", ".join(f"{topic} {count}" for topic, count in sorted(lag.items()))
        raise StoreBehind(
            f"the store has not read every record yet ({behind}); run the projector (or the api) until it "
            "catches up, then replay again"
        )
    adjustments = planned_adjustments(connection, result)
    if adjustments:
        records = [orjson.loads(adjustment.model_dump_json()) for adjustment in adjustments]
        producer = AIOKafkaProducer(**client_options(settings), acks="all", max_request_size=PRODUCER_REQUEST_BYTES_MAX)
        await producer.start()
        try:
            topic = topic_names(settings.topic_prefix).usage
            for key, value in usage_messages(records, ADJUSTMENTS_PER_MESSAGE):
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
    return Applied(len(adjustments), sum(adjustment.cost_nanos for adjustment in adjustments))
