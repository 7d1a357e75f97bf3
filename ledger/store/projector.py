"""The projector: reads the ledger's topics into the store (DESIGN section 7).

It has no consumer group: it assigns itself every partition of its topics and keeps its
positions in the store, committed in the same transaction as the rows they produced. A
restart, or a SIGKILL at any point, continues exactly after the last committed batch:
nothing is lost, and nothing is stored twice (the writer drops a row whose key its table
holds). The api hosts it as the store's single writer; ``spend-ledger
project`` runs it alone.

A new log under the same topics (a restarted dev broker starts each at offset 0 again)
is told from the old one before any read (``ledger.store.positions``): it ends before the
stored position, or its record just before it is not the one stored last (a digest of
timestamp, key, value). It is read from its start; stored offsets continue after the old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from ledger.domain.pricing import TokenCounter
from ledger.kafka import client_options, end_offsets, ensure_topics, reached, records_behind
from ledger.settings import Settings
from ledger.store.maintenance import maintain
from ledger.store.positions import new_log_at, reconcile_log, record_fingerprint, start_new_logs
from ledger.store.recent_keys import BACKLOG_COVERED, RecentKeys
from ledger.store.records import (
    StoreRows,
    admission_row,
    alert_row,
    command_row,
    dead_letter_row,
    price_book_row,
    rate_limit_row,
    usage_rows,
)
from ledger.store.usage_sql import UsageMessage, ValueBuffer, ledger_entry_rows, usage_table
from ledger.store.writer import append, load_recent_keys, stored_positions
from ledger.topics import TopicNames, topic_names

log = logging.getLogger(__name__)

# An append has a fixed cost (a lake commit, a dedup look-up per table): with one event per
# message, 256 messages an append held the projector near 1,800 events/s and 4,096 took it to
# 12,700 (bench.projector --per-message 1). Large messages are bounded by their bytes
# (``Settings.store_batch_mib``): 48 MiB (about 50,000 events of 1 KB) keeps the three
# stages overlapping; 128 MiB took 15-25% more CPU for the same events (page faults on larger
# buffers) and left the pipeline emptier.
BATCH_MESSAGES_MAX = 4096
FETCH_TIMEOUT_MS = 200
LAG_EVERY_S = 1.0
APPEND_EVERY_S = 0.25  # at most this often while records trickle in; at once when a batch is full
PARTITION_FETCH_BYTES_MAX = 16 * 1024 * 1024  # a usage message may be 8 MiB

# Where a batch leaves each partition read: next offsets, fingerprints of the records before.
Positions = tuple[dict[tuple[str, int], int], dict[tuple[str, int], str]]


@dataclass(slots=True)
class ProjectorStats:
    """What a projector run stored (rows offered per table; repeats are dropped by key)."""

    messages: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    skipped: int = 0  # records on the ledger's output topics that it did not write
    maintenance_rounds: int = 0
    seconds: float = 0.0


def input_topics(names: TopicNames) -> tuple[str, ...]:
    """The topics the store is built from."""
    return (
        names.usage,
        names.ledger_entries,
        names.budget_commands,
        names.budget_alerts,
        names.prices,
        names.dead_letter,
        names.admissions,
        names.rate_limits,
    )


def _split_at(
    records: list[ConsumerRecord[bytes, bytes]], bytes_max: int
) -> tuple[list[ConsumerRecord[bytes, bytes]], list[ConsumerRecord[bytes, bytes]]]:
    """The first records holding at most ``bytes_max`` of values (at least one), and the rest."""
    size = 0
    for place, record in enumerate(records):
        size += max(record.serialized_value_size, 0)
        if size > bytes_max:
            cut = max(place, 1)
            return records[:cut], records[cut:]
    return records, []


class _Stages:
    """A batch's build, then its append, each in a thread: one build at a time (they share
    the unpacker), appends in order, and at most one built batch waiting for its append,
    so memory holds a bounded number of batches."""

    def __init__(self) -> None:
        self._building: asyncio.Task[tuple[StoreRows, Positions]] | None = None
        self._appending: asyncio.Task[None] | None = None  # the last batch's; it waits for the one before
        self._waiting: asyncio.Task[None] | None = None  # the batch's before that

    async def start(
        self,
        build: Callable[[list[ConsumerRecord[bytes, bytes]]], tuple[StoreRows, Positions]],
        append: Callable[[tuple[StoreRows, Positions], int], None],
        records: list[ConsumerRecord[bytes, bytes]],
    ) -> None:
        """Start ``records`` on their way, once the build before has ended and the
        append before the last has too (a failure of either is raised here)."""
        if self._building is not None:
            await self._building
        if self._waiting is not None:
            await self._waiting
        self._building = asyncio.create_task(asyncio.to_thread(build, records))
        self._waiting = self._appending
        self._appending = asyncio.create_task(_after(self._building, self._waiting, append, len(records)))

    def check(self) -> None:
        """Raise the failure of a build or append that has ended with one (else it would
        be raised only when the next batch starts, which a quiet topic may never bring)."""
        for task in (self._building, self._appending, self._waiting):
            failure = task.exception() if task is not None and task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure

    async def drain(self) -> None:
        """Wait until every batch started is appended."""
        if self._appending is not None:
            await self._appending
        self._building = self._appending = self._waiting = None


async def _after(
    built: asyncio.Task[tuple[StoreRows, Positions]],
    before: asyncio.Task[None] | None,
    append: Callable[[tuple[StoreRows, Positions], int], None],
    messages: int,
) -> None:
    """Append ``built`` once it is built and the append ``before`` it has ended."""
    rows = await built
    if before is not None:
        await before
    await asyncio.to_thread(append, rows, messages)


class Projector:
    """Reads the topics into ``connection``: the store's one writing connection, and the
    projector's alone (it is set to one thread)."""

    def __init__(
        self,
        settings: Settings,
        connection: duckdb.DuckDBPyConnection,
        count_tokens: TokenCounter,
        *,
        fetch_max_wait_ms: int | None = None,
    ):
        self.settings = settings
        self.fetch_max_wait_ms = fetch_max_wait_ms or settings.kafka_fetch_max_wait_ms
        # One thread per DuckDB: the projector overlaps its own stages (fetch, build, append), and
        # an insert on two threads took 1.5-2.4 times the CPU for the same rows (bench.projector).
        self.connection = connection
        self.connection.execute("SET threads = 1")
        self.count_tokens = count_tokens
        self.names = topic_names(settings.topic_prefix)
        self.stats = ProjectorStats()
        # Unpack messages (in memory, never the store), used by one batch's build at a time: a
        # build unpacks its usage and its ledger entries at once (``_entries_thread``).
        self._unpacker = duckdb.connect(config={"threads": 1})
        self._unpacker.execute("SET TimeZone = 'UTC'")
        self._entry_unpacker = duckdb.connect(config={"threads": 1})
        self._entry_unpacker.execute("SET TimeZone = 'UTC'")
        self._entries_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-entries")
        self._usage_buffer, self._entry_buffer = ValueBuffer(), ValueBuffer()
        self._recent: dict[str, RecentKeys] = {}  # loaded when a run starts
        self.lag_records = 0  # records on its topics not read yet (updated about once a second)
        # Per partition: what turns the current log's offsets into stored source_offsets.
        self._offset_bases: dict[tuple[str, int], int] = {}
        self._rows_of: dict[str, Callable[[ConsumerRecord[bytes, bytes], int, StoreRows], None]] = {
            self.names.budget_commands: self._command,
            self.names.budget_alerts: self._alert,
            self.names.prices: self._price_book,
            self.names.dead_letter: self._dead_letter,
            self.names.admissions: self._admission,
            self.names.rate_limits: self._rate_limit,
        }

    async def run(self, stop: asyncio.Event | None = None, *, until_caught_up: bool = False) -> ProjectorStats:
        """Project until ``stop`` is set, or with ``until_caught_up`` until every partition
        is read to the end it had when the run began."""
        started = time.monotonic()
        await ensure_topics(self.settings)
        await reconcile_log(self.settings, self.connection, input_topics(self.names))
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            # A stored offset retention has deleted since: on from the log's first record.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
            fetch_max_bytes=4 * PARTITION_FETCH_BYTES_MAX,
        )
        await consumer.start()
        try:
            ends = await self._assign(consumer)
            loading, horizon_s = time.monotonic(), self.settings.dedup_horizon_s
            self._recent = await asyncio.to_thread(load_recent_keys, self.connection, datetime.now(UTC), horizon_s)
            log.info("read the store's recent keys in %.1f s", time.monotonic() - loading)
            targets = ends if until_caught_up else {}
            # Three stages overlap, one batch each: records are fetched (here) while the batch
            # before is built into rows (Python and DuckDB, which releases the GIL) and the one
            # before that is appended; appends stay one at a time and in order. A live tail
            # brings a few records per fetch: they are gathered for up to APPEND_EVERY_S, as
            # each DuckDB transaction has a fixed cost (small ones took 0.45 of a core at
            # 250 admits/s in bench.admit).
            stages = _Stages()
            batch_bytes_max = int(self.settings.store_batch_mib * 1024 * 1024)
            pending: list[ConsumerRecord[bytes, bytes]] = []
            pending_bytes = 0
            append_at = 0.0
            lag_at = 0.0
            maintain_at = time.monotonic() + self.settings.store_maintenance_every_s
            while stop is None or not stop.is_set():
                stages.check()
                if time.monotonic() >= maintain_at:  # between two appends: never beside one
                    await stages.drain()
                    await asyncio.to_thread(self._maintain)
                    maintain_at = time.monotonic() + self.settings.store_maintenance_every_s
                if time.monotonic() >= lag_at:
                    self.lag_records = await records_behind(consumer)
                    lag_at = time.monotonic() + LAG_EVERY_S
                if until_caught_up and await reached(consumer, targets):
                    break
                room = BATCH_MESSAGES_MAX - len(pending)
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room)
                for batch in batches.values():
                    pending.extend(batch)
                    pending_bytes += sum(max(record.serialized_value_size, 0) for record in batch)
                while pending_bytes > batch_bytes_max:  # a fetch brought more than a batch: whole ones first
                    whole, pending = _split_at(pending, batch_bytes_max)
                    pending_bytes -= sum(max(record.serialized_value_size, 0) for record in whole)
                    await stages.start(self._rows, self._append, whole)
                    append_at = time.monotonic() + APPEND_EVERY_S
                full = len(pending) >= BATCH_MESSAGES_MAX or pending_bytes >= batch_bytes_max
                if pending and (full or time.monotonic() >= append_at):
                    await stages.start(self._rows, self._append, pending)
                    pending, pending_bytes = [], 0
                    append_at = time.monotonic() + APPEND_EVERY_S
            if pending:
                await stages.start(self._rows, self._append, pending)
            await stages.drain()
        finally:
            await consumer.stop()
        self.stats.seconds += time.monotonic() - started
        return self.stats

    def _maintain(self) -> None:
        """One round of the lake's maintenance; a failure is logged and tried next round
        (projecting goes on: small files and old snapshots cost speed, not correctness)."""
        retention = timedelta(seconds=self.settings.store_snapshot_retention_s)
        now = datetime.now(UTC)
        try:
            for keys in self._recent.values():
                keys.forget_before(
                    self.connection, now - timedelta(seconds=self.settings.dedup_horizon_s) - BACKLOG_COVERED
                )
            maintain(self.connection, retention=retention, now=now)
        except duckdb.Error as exc:
            log.warning(
                "store maintenance failed, tried again in %.0f s: %s", self.settings.store_maintenance_every_s, exc
            )
            return
        self.stats.maintenance_rounds += 1

    async def _assign(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Assign every input partition at its stored position; returns their ends now.
        A position past a partition's end is a log replaced since ``reconcile_log`` looked:
        it is stored as a new log too, and read from its start."""
        await consumer.topics()  # loads the cluster metadata
        partitions = [
            TopicPartition(topic, partition)
            for topic in input_topics(self.names)
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        ends = await end_offsets(self.settings, partitions)
        stored = stored_positions(self.connection)
        shrunk = [
            new_log_at(tp, position, ends[tp], "ends_before_position")
            for tp in partitions
            if (position := stored.get((tp.topic, tp.partition))) is not None and position.next_offset > ends[tp]
        ]
        start_new_logs(self.connection, shrunk)
        positions = stored_positions(self.connection)
        self._offset_bases = {key: position.offset_base for key, position in positions.items()}
        for tp in partitions:
            position = positions.get((tp.topic, tp.partition))
            if position is None or position.next_offset == 0:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, position.next_offset)
        return ends

    def _rows(self, records: list[ConsumerRecord[bytes, bytes]]) -> tuple[StoreRows, Positions]:
        """Rows for every record of a batch, and where each partition read now is: the next
        offset, and the fingerprint of the record before it."""
        rows = StoreRows()
        usage: list[UsageMessage] = []
        entries: list[tuple[ConsumerRecord[bytes, bytes], bytes]] = []
        last_read: dict[tuple[str, int], ConsumerRecord[bytes, bytes]] = {}
        for record in records:
            key = (record.topic, record.partition)
            if record.value is not None and record.topic == self.names.usage:  # unpacked below, all at once
                received_at_us = record.timestamp * 1_000 if record.timestamp >= 0 else None
                source_offset = self._offset_bases.get(key, 0) + record.offset
                usage.append(UsageMessage(record.value, record.partition, source_offset, received_at_us))
            elif record.value is not None and record.topic == self.names.ledger_entries:
                entries.append((record, record.value))  # unpacked below, all at once
            elif record.value is not None:  # a compacted topic's tombstone carries nothing
                try:
                    self._rows_of[record.topic](record, self._offset_bases.get(key, 0) + record.offset, rows)
                except (ValueError, KeyError, TypeError) as exc:  # not written by the ledger
                    self.stats.skipped += 1
                    log.warning("skipped %s/%d@%d: %r", record.topic, record.partition, record.offset, exc)
            if key not in last_read or record.offset > last_read[key].offset:
                last_read[key] = record
        # Both at once, on both cores (DuckDB and Arrow release the GIL): the build was the
        # pipeline's slowest stage (bench.projector).
        values = [value for _, value in entries]
        unpacking = (
            self._entries_thread.submit(ledger_entry_rows, self._entry_unpacker, values, self._entry_buffer)
            if values
            else None
        )
        if usage:
            rows.usage_events = usage_table(self._unpacker, usage, self._usage_rows, self._usage_buffer)
        if unpacking is not None:
            rows.ledger_entries, refused = unpacking.result()
            for place in refused:  # not written by the ledger
                record = entries[place][0]
                self.stats.skipped += 1
                log.warning("skipped %s/%d@%d: not a batch of entries", record.topic, record.partition, record.offset)
        next_offsets = {key: record.offset + 1 for key, record in last_read.items()}
        fingerprints = {key: record_fingerprint(record) for key, record in last_read.items()}
        return rows, (next_offsets, fingerprints)

    def _append(self, built: tuple[StoreRows, Positions], messages: int) -> None:
        """Rows and positions in one transaction."""
        rows, (next_offsets, fingerprints) = built
        horizon_s = self.settings.dedup_horizon_s
        append(self.connection, rows, next_offsets, fingerprints, dedup_horizon_s=horizon_s, recent=self._recent)
        self.stats.messages += messages
        self.stats.batches += 1
        for table, table_rows in rows.tables.items():
            self.stats.rows[table] = self.stats.rows.get(table, 0) + len(table_rows)
        for table, unpacked in (("usage_events", rows.usage_events), ("ledger_entries", rows.ledger_entries)):
            if unpacked is not None:
                self.stats.rows[table] = self.stats.rows.get(table, 0) + unpacked.num_rows

    def _usage_rows(self, message: UsageMessage) -> list[tuple[Any, ...]]:
        """The Python path for a usage message the query did not take whole (``usage_sql``)."""
        try:
            count_tokens, received_at_us = self.count_tokens, message.received_at_us
            return usage_rows(message.value, message.partition, message.offset, count_tokens, received_at_us)
        except (ValueError, KeyError, TypeError) as exc:  # not written by the ledger
            self.stats.skipped += 1
            log.warning("skipped %s/%d@%d: %r", self.names.usage, message.partition, message.offset, exc)
            return []

    def _command(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        row = command_row(record.value, record.partition, source_offset)
        if row is not None:
            rows.tables["budget_commands"].append(row)

    def _alert(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        rows.tables["budget_alerts"].append(alert_row(record.value))

    def _price_book(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        row = price_book_row(record.value, source_offset)
        if row is not None:
            rows.tables["price_books"].append(row)

    def _dead_letter(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        row = dead_letter_row(record.value)  # its source_offset is the refused record's, from the value
        if row is not None:
            rows.tables["dead_letters"].append(row)

    def _admission(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        rows.tables["admission_events"].append(admission_row(record.value))

    def _rate_limit(self, record: ConsumerRecord[bytes, bytes], source_offset: int, rows: StoreRows) -> None:
        assert record.value is not None
        row = rate_limit_row(record.value, record.partition, source_offset)
        if row is not None:
            rows.tables["rate_limit_records"].append(row)
