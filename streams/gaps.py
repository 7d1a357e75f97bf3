"""Closing gaps Faust leaves in a partition's input.

Around a rebalance Faust may drop a message it fetched in the old generation and not
deliver it again (it skips and acks it, then drops the re-fetched copy as already read):
the live tests lost whole messages that way after a worker restart. Every step of ours
therefore checks that each input partition continues exactly where the last step left
off (or, after an assignment, at the group's committed offset); a message seen again is
skipped, and a gap is read straight from the broker and processed in order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.kafka import client_options
from ledger.settings import Settings

log = logging.getLogger(__name__)

GAP_READ_TIMEOUT_MS = 10_000
TAIL_FETCH_WAIT_MS = 50
TAIL_RECORDS_MAX = 1_000


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """A record read directly, shaped like the part of a Faust message the steps use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None  # seconds since the epoch, as Faust gives it; None: the record has none


def _seconds(timestamp_ms: int | None) -> float | None:
    return None if timestamp_ms is None or timestamp_ms < 0 else timestamp_ms / 1000.0


@dataclass(frozen=True, slots=True)
class FetchedEvent:
    message: FetchedMessage


class GapFiller:
    """Per input partition, the next offset a step must see."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self._settings = settings
        self._group_id = group_id
        self._next: dict[tuple[str, int], int] = {}
        self._next_at_last_check: dict[tuple[str, int], int] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one reader, shared by every agent's steps

    def reset(self) -> None:
        """Forget positions: after a rebalance the consumer starts again at the commits."""
        self._next.clear()
        self._next_at_last_check.clear()

    async def stalled_tails(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], list[FetchedEvent]]:
        """Records waiting in partitions that made no progress since the last check."""
        async with self._lock:
            for key in partitions:
                if key not in self._next:
                    self._next[key] = await self._committed_locked(key)
            stalled = [key for key in partitions if self._next_at_last_check.get(key) == self._next[key]]
            self._next_at_last_check = {key: self._next[key] for key in partitions}
            if not stalled:
                return {}
            reader = await self._client()
            tps = [TopicPartition(*key) for key in stalled]
            reader.assign(tps)
            for tp in tps:
                reader.seek(tp, self._next[(tp.topic, tp.partition)])
            batches = await reader.getmany(*tps, timeout_ms=TAIL_FETCH_WAIT_MS * 2, max_records=TAIL_RECORDS_MAX)
            reader.assign([])
        found = {}
        for tp, records in batches.items():
            if records:
                found[(tp.topic, tp.partition)] = [
                    FetchedEvent(
                        FetchedMessage(tp.topic, tp.partition, r.offset, r.key, r.value, _seconds(r.timestamp))
                    )
                    for r in records
                ]
                log.warning("%s: %d record(s) from %d waited past a check", tp, len(records), records[0].offset)
        return found

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None

    async def complete(self, events: list[Any]) -> list[Any]:
        """The step's events in partition order, without repeats, with gaps filled."""
        by_partition: dict[tuple[str, int], list[Any]] = {}
        for event in events:
            by_partition.setdefault((event.message.topic, event.message.partition), []).append(event)
        completed: list[Any] = []
        for key, partition_events in by_partition.items():
            expected = self._next.get(key)
            if expected is None:
                expected = await self._committed(key)
            for event in sorted(partition_events, key=lambda e: e.message.offset):
                offset = event.message.offset
                if offset < expected:
                    continue  # processed already by this worker since the assignment
                if offset > expected:
                    completed.extend(await self._read(key, expected, offset))
                completed.append(event)
                expected = offset + 1
            self._next[key] = expected
        return completed

    async def _client(self) -> AIOKafkaConsumer:
        if self._reader is None:
            reader = AIOKafkaConsumer(
                **client_options(self._settings),
                group_id=self._group_id,
                enable_auto_commit=False,
                fetch_max_wait_ms=TAIL_FETCH_WAIT_MS,
            )
            await reader.start()
            self._reader = reader
        return self._reader

    async def _committed(self, key: tuple[str, int]) -> int:
        async with self._lock:
            return await self._committed_locked(key)

    async def _committed_locked(self, key: tuple[str, int]) -> int:
        reader = await self._client()
        tp = TopicPartition(*key)
        committed = await reader.committed(tp)
        if committed is not None:
            return int(committed)
        return int((await reader.beginning_offsets([tp]))[tp])

    async def _read(self, key: tuple[str, int], start: int, end: int) -> list[FetchedEvent]:
        """The records in [start, end) of a partition (fewer on a compacted topic)."""
        async with self._lock:
            return await self._read_locked(key, start, end)

    async def _read_locked(self, key: tuple[str, int], start: int, end: int) -> list[FetchedEvent]:
        reader = await self._client()
        tp = TopicPartition(*key)
        reader.assign([tp])
        reader.seek(tp, start)
        found: list[FetchedEvent] = []
        while await reader.position(tp) < end:
            batches = await reader.getmany(tp, timeout_ms=GAP_READ_TIMEOUT_MS)
            if not batches:
                raise TimeoutError(f"could not read {key} [{start}, {end}) within {GAP_READ_TIMEOUT_MS} ms")
            for record in batches.get(tp, []):
                if record.offset < end:
                    message = FetchedMessage(
                        tp.topic, tp.partition, record.offset, record.key, record.value, _seconds(record.timestamp)
                    )
                    found.append(FetchedEvent(message))
        reader.assign([])
        log.warning("%s: read %d record(s) of [%d, %d) Faust did not deliver", key, len(found), start, end)
        return found
