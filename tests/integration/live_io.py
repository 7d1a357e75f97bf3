"""Live input and output while a test runs: a producer kept open on a loop of its own, a
background reader of ``budget-state`` (the latest snapshot per scope, and when it was
read), and what a worker's log says it owns."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from ledger.domain.snapshots import BudgetSnapshot

FOLLOW_START_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 60.0

Record = tuple[bytes | None, bytes, int | None]  # key, value, partition (None: by key)


class Producer:
    """One aiokafka producer on an event loop in a thread of its own, so a test can send
    from any thread without starting a producer per call. Use as a context manager."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-producer", daemon=True)
        self._thread.start()

        async def start() -> AIOKafkaProducer:  # aiokafka binds a producer to the running loop
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_request_size=16 * 1024 * 1024)
            await producer.start()
            return producer

        self._producer: AIOKafkaProducer = self._call(start())

    def send(self, topic: str, records: list[Record]) -> list[RecordMetadata]:
        """Send ``records`` and wait for the broker's acknowledgement of each."""

        async def send_all() -> list[RecordMetadata]:
            sent = [
                await self._producer.send(topic, value, key=key, partition=partition)
                for key, value, partition in records
            ]
            return list(await asyncio.gather(*sent))

        return self._call(send_all())

    def close(self) -> None:
        self._call(self._producer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(SEND_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(SEND_TIMEOUT_S)


class StateFollower:
    """Reads ``budget-state`` from its start in a thread of its own until stopped, keeping
    each scope's latest snapshot (raw; parsed when asked for) and the monotonic time each
    scope was first read. Use as a context manager."""

    def __init__(self, bootstrap_servers: str, topic: str, partitions: int) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._partitions = partitions
        self._latest: dict[bytes, bytes] = {}
        self._first_seen: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def __enter__(self) -> StateFollower:
        self._thread.start()
        if not self._started.wait(FOLLOW_START_TIMEOUT_S):
            raise AssertionError(f"could not start reading {self._topic}: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(FOLLOW_START_TIMEOUT_S)

    def snapshot(self, scope_key: str) -> BudgetSnapshot | None:
        """The latest snapshot of ``scope_key`` read so far."""
        with self._lock:
            raw = self._latest.get(scope_key.encode())
        return None if raw is None else BudgetSnapshot.model_validate_json(raw)

    def first_seen(self, scope_key: str) -> float | None:
        """``time.monotonic()`` when a snapshot of ``scope_key`` was first read."""
        with self._lock:
            return self._first_seen.get(scope_key.encode())

    def wait_for(
        self, scope_key: str, holds: Callable[[BudgetSnapshot], bool], what: str, timeout_s: float
    ) -> BudgetSnapshot:
        """The first snapshot of ``scope_key`` for which ``holds`` is true (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._error is not None:
                raise AssertionError(f"reading {self._topic} failed") from self._error
            found = self.snapshot(scope_key)
            if found is not None and holds(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last snapshot: {found!r}")
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # surfaced to the test by wait_for / __enter__
            self._error = exc
            self._started.set()

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self._topic, p) for p in range(self._partitions)])
            await consumer.seek_to_beginning()
            self._started.set()
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                with self._lock:
                    for records in batches.values():
                        for record in records:
                            if record.key is None:
                                continue
                            if record.value is None:
                                self._latest.pop(record.key, None)
                            else:
                                self._latest[record.key] = record.value
                                self._first_seen.setdefault(record.key, now)
        finally:
            await consumer.stop()


_ASSIGNED = re.compile(r"Setting newly assigned partitions(.*?)(?=\n\[\d{4}-|\Z)", re.S)


def assigned_partitions(log_path: Path, topic: str) -> set[int]:
    """The partitions of ``topic`` that a Faust worker's log says it was assigned last."""
    tables = _ASSIGNED.findall(log_path.read_text(errors="replace"))
    if not tables:
        return set()
    for line in tables[-1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == topic:
            return _partition_set(cells[1])
    return set()


def _partition_set(text: str) -> set[int]:
    """Faust's ``{0-3, 6}`` as {0, 1, 2, 3, 6}."""
    found: set[int] = set()
    for part in text.strip("{} ").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found
