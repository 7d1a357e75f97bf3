"""Telling a new log from the one the store read (DESIGN section 7).

The store's positions are offsets on the broker's log. A log can be replaced under the
same topic names (the dev broker keeps nothing across a restart; a topic deleted and
made again), and the new one's offsets start at 0 again. Before anything reads from the
stored positions, ``reconcile_log`` checks each against the broker: a log that ends
before the stored position, or whose record just before it is not the one the store
read last (by fingerprint), is new. The store then reads it from its start, and its
stored ``source_offset``s continue after the old log's (``offset_base``), so "read
later" still sorts later.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.kafka import client_options, end_offsets
from ledger.settings import Settings
from ledger.store.writer import StoredPosition, stored_positions

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 8
RECORD_FETCH_TIMEOUT_S = 10.0
FETCH_TIMEOUT_MS = 200
FETCH_MAX_WAIT_MS = 100
PARTITION_FETCH_BYTES_MAX = 16 * 1024 * 1024  # a usage message may be 8 MiB

NewLogReason = Literal["ends_before_position", "other_record_before_position"]


@dataclass(frozen=True, slots=True)
class NewLog:
    """A partition whose log is not the one the store read, and where the store now is."""

    topic: str
    partition: int
    old_next_offset: int  # the stored position on the old log
    offset_base: int  # the new log's offsets are stored from here on
    end_offset: int  # the new log's end when it was found
    reason: NewLogReason


def record_fingerprint(record: Any) -> str:
    """A digest of a consumed record's timestamp, key and value: two logs that hold the
    same fingerprint at one offset are taken to be the same log."""
    key: bytes | None = record.key
    value: bytes | None = record.value
    digest = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    lengths = (-1 if key is None else len(key), -1 if value is None else len(value))
    digest.update(struct.pack(">qqq", int(record.timestamp), *lengths))
    digest.update(key or b"")
    digest.update(value or b"")
    return digest.hexdigest()


async def reconcile_log(
    settings: Settings, connection: duckdb.DuckDBPyConnection, topics: Iterable[str]
) -> list[NewLog]:
    """Check every stored position on ``topics`` (past 0) against the broker's log, and
    move the ones on a new log to its start, in one transaction. Returns what it found.

    Run it before reading from stored positions (the projector, the admission follower)."""
    wanted = set(topics)
    positions = {
        key: position
        for key, position in stored_positions(connection).items()
        if key[0] in wanted and position.next_offset > 0
    }
    if not positions:
        return []
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # the record was deleted by retention: the next one comes
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
        fetch_max_bytes=4 * PARTITION_FETCH_BYTES_MAX,
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the cluster metadata
        partitions = [
            TopicPartition(topic, partition)
            for topic, partition in sorted(positions)
            if partition in (consumer.partitions_for_topic(topic) or ())
        ]
        ends = await end_offsets(settings, partitions)
        found: list[NewLog] = []
        to_check: dict[TopicPartition, StoredPosition] = {}
        for tp in partitions:
            position = positions[(tp.topic, tp.partition)]
            if ends[tp] < position.next_offset:
                found.append(new_log_at(tp, position, ends[tp], "ends_before_position"))
            elif position.last_record is None:
                log.warning(
                    "%s: no fingerprint stored for the record before %d (a store written before them): "
                    "taking the broker's log for the one the store read",
                    tp,
                    position.next_offset,
                )
            else:
                to_check[tp] = position
        before = await _records_before(consumer, to_check, ends)
    finally:
        await consumer.stop()
    for tp, position in to_check.items():
        if tp not in before:
            log.warning(
                "%s: no answer for the record at %d within %.0f s: taking the broker's log for the one the store read",
                tp,
                position.next_offset - 1,
                RECORD_FETCH_TIMEOUT_S,
            )
            continue
        record = before[tp]
        if record is None:
            log.warning(
                "%s: the record at %d is gone (retention or compaction): taking the broker's log for the one "
                "the store read",
                tp,
                position.next_offset - 1,
            )
        elif record_fingerprint(record) != position.last_record:
            found.append(new_log_at(tp, position, ends[tp], "other_record_before_position"))
    start_new_logs(connection, found)
    return found


def start_new_logs(connection: duckdb.DuckDBPyConnection, found: list[NewLog]) -> None:
    """Store each new log's position, at its start, in one transaction; log each."""
    if not found:
        return
    connection.begin()
    try:
        for new in found:
            connection.execute(
                "UPDATE consumer_offsets SET next_offset = 0, offset_base = ?, last_record = NULL "
                "WHERE topic = ? AND kafka_partition = ?",
                [new.offset_base, new.topic, new.partition],
            )
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    # One line per topic and reason (a new dev broker makes every partition new), each
    # partition's figures at debug.
    by_topic: dict[tuple[str, NewLogReason], list[NewLog]] = {}
    for new in found:
        by_topic.setdefault((new.topic, new.reason), []).append(new)
        log.debug(
            "%s/%d: new log ending at %d, stored position %d; its stored offsets continue from %d",
            new.topic,
            new.partition,
            new.end_offset,
            new.old_next_offset,
            new.offset_base,
        )
    for (topic, reason), news in by_topic.items():
        why = (
            "the log ends before the stored position"
            if reason == "ends_before_position"
            else "the record before the stored position is not the one the store read there"
        )
        partitions = ",".join(str(new.partition) for new in sorted(news, key=lambda new: new.partition))
        log.warning(
            "%s %s a new log (%s): read from the start; stored offsets continue after the old log's",
            topic,
            f"partitions {partitions} are" if len(news) > 1 else f"partition {partitions} is",
            why,
        )


def new_log_at(tp: TopicPartition, position: StoredPosition, end: int, reason: NewLogReason) -> NewLog:
    """The partition's new log, read from its start, stored after everything read before."""
    base = position.offset_base + position.next_offset
    return NewLog(tp.topic, tp.partition, position.next_offset, base, end, reason)


async def _records_before(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, StoredPosition], ends: dict[TopicPartition, int]
) -> dict[TopicPartition, Any]:
    """The record at each position - 1, fetched for all partitions at once: None for one
    the log no longer has, missing for one not answered within ``RECORD_FETCH_TIMEOUT_S``."""
    if not positions:
        return {}
    consumer.assign(list(positions))
    for tp, position in positions.items():
        consumer.seek(tp, position.next_offset - 1)
    answers: dict[TopicPartition, Any] = {}
    deadline = time.monotonic() + RECORD_FETCH_TIMEOUT_S
    while len(answers) < len(positions) and time.monotonic() < deadline:
        waiting = [tp for tp in positions if tp not in answers]
        batches = await consumer.getmany(*waiting, timeout_ms=FETCH_TIMEOUT_MS)
        for tp, records in batches.items():
            if records:  # the first record at or after the offset asked for
                first = records[0]
                answers[tp] = first if first.offset == positions[tp].next_offset - 1 else None
        for tp in waiting:
            if tp not in answers and await consumer.position(tp) >= ends[tp]:
                answers[tp] = None  # read to its end without it
        consumer.pause(*answers)
    return answers
