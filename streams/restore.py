"""Publishing a restore plan (``ledger.restore.plan``) where the worker folds it.

A scope's state goes to ``internal.scope-charges``, on the partition that owns the scope,
as a restore record the fold puts in place (source ``r``, the plan's stamp as offset: the
same record folded twice changes nothing). Event ids go to ``internal.usage-by-event``, on
the partition that dedups them. Both land before any usage routed after them, so a
restored scope never loses a charge to its restore, and a retried event meets its id.
The price book, the rate limits in force and the open holds go back to their topics.

The worker must not be folding input of its own meanwhile: a restore replaces state
(``spend-ledger dev`` restores before it starts the worker; deploy/PRODUCTION.md has the
runbook for real Kafka).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.domain.snapshots import RESTORE_SOURCE
from ledger.kafka import client_options, end_offsets, ensure_topics
from ledger.restore.plan import RestorePlan
from ledger.settings import Settings
from ledger.topics import internal_topic_names, topic_names
from streams.codec import encode_restore, encode_restored_ids, partition_of

IDS_BYTES_MAX = 900_000  # under Kafka's default 1 MB message limit
PRODUCER_REQUEST_BYTES_MAX = 16 * 1024 * 1024
FETCH_TIMEOUT_MS = 200

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True, slots=True)
class RestoreRecords:
    """How many records a restore published, by what they carry."""

    scopes: int
    id_messages: int
    price_books: int
    rate_limits: int
    holds: int

    @property
    def total(self) -> int:
        return self.scopes + self.id_messages + self.price_books + self.rate_limits + self.holds


def _id_messages(plan: RestorePlan, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, record) for the plan's event ids: each id on the partition that dedups
    it, oldest first, a record at most ``IDS_BYTES_MAX``; a record's time is its newest id's
    (an id may be kept a little longer than the horizon, never shorter)."""
    per_partition: dict[int, list[tuple[str, int, float]]] = {}
    for event_id, seen_at in plan.event_ids:
        # Its size in the record: as JSON (escapes included) and a comma.
        size_in_record = len(orjson.dumps(event_id)) + 1
        partition = partition_of(event_id.encode(), partitions)
        per_partition.setdefault(partition, []).append((event_id, size_in_record, seen_at))
    records = []
    for partition, ids in sorted(per_partition.items()):
        chunk: list[str] = []
        size, newest = 0, 0.0
        for event_id, length, seen_at in ids:
            if chunk and size + length > IDS_BYTES_MAX:
                records.append((partition, encode_restored_ids(plan.stamp, chunk, newest)))
                chunk, size = [], 0
            chunk.append(event_id)
            size += length
            newest = max(newest, seen_at)
        if chunk:
            records.append((partition, encode_restored_ids(plan.stamp, chunk, newest)))
    return records


async def publish_restore(
    settings: Settings, plan: RestorePlan, on_progress: Progress = lambda d, t: None
) -> RestoreRecords:
    """Publish ``plan``; returns once the broker acknowledged every record."""
    await ensure_topics(settings)
    names = topic_names(settings.topic_prefix)
    internal = internal_topic_names(settings.topic_prefix)
    partitions = settings.topic_partitions
    id_records = _id_messages(plan, partitions)
    books = [] if plan.price_book is None else [plan.price_book]
    counts = RestoreRecords(len(plan.states), len(id_records), len(books), len(plan.rate_limits), len(plan.holds))
    producer = AIOKafkaProducer(
        **client_options(settings), acks="all", max_request_size=PRODUCER_REQUEST_BYTES_MAX, linger_ms=5
    )
    await producer.start()
    done = 0
    sent: list[asyncio.Future[object]] = []

    async def send(topic: str, value: bytes, key: bytes | None, partition: int | None = None) -> None:
        nonlocal done
        sent.append(await producer.send(topic, value, key=key, partition=partition))
        done += 1
        if done % 500 == 0:
            on_progress(done, counts.total)

    try:
        # Configuration first: the worker prices with the newest book from the start.
        for book in books:
            await send(names.prices, book.model_dump_json().encode(), book.book_id.encode())
        for key, value in plan.rate_limits:
            await send(names.rate_limits, value, key)
        for key, value in plan.holds:
            await send(names.admissions, value, key)
        for partition, value in id_records:
            await send(internal.usage_by_event, value, None, partition)
        for scope, state in plan.states.items():
            value = encode_restore(RESTORE_SOURCE, plan.stamp, state.model_dump_json().encode())
            await send(internal.scope_charges, value, scope.encode(), partition_of(scope.encode(), partitions))
        await producer.flush()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    on_progress(counts.total, counts.total)
    return counts


async def wait_restored(
    settings: Settings, plan: RestorePlan, timeout_s: float, on_progress: Progress = lambda d, t: None
) -> int:
    """Wait until the worker has put every restored scope in place (its snapshot on
    ``budget-state`` carries the plan's stamp); returns how many it has. Raises
    ``TimeoutError`` after ``timeout_s``."""
    topic = topic_names(settings.topic_prefix).budget_state
    waiting = set(plan.states)
    total = len(waiting)
    deadline = time.monotonic() + timeout_s
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        while not partitions:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic} was not created within {timeout_s:g} s")
                await asyncio.sleep(0.2)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        await end_offsets(settings, partitions)  # the topic answers fetches before we time the wait
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the worker put {total - len(waiting)} of {total} restored scopes in place within {timeout_s:g} s"
                )
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            for records in batches.values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    scope = record.key.decode()
                    if scope in waiting and orjson.loads(record.value)["applied"].get(RESTORE_SOURCE, -1) >= plan.stamp:
                        waiting.discard(scope)
            on_progress(total - len(waiting), total)
    finally:
        await consumer.stop()
    return total
