"""Live budget state in the api's memory: the ``budget-state`` topic, followed.

The worker publishes each scope's ``BudgetSnapshot`` to the compacted ``budget-state``
topic; the api reads it from the start and keeps the last record per scope. ``check``
answers from here, never from DuckDB. Snapshots are kept as bytes and parsed when first
asked for, so following a busy topic costs little.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.domain.budgets import BudgetState
from ledger.domain.snapshots import BudgetSnapshot
from ledger.kafka import client_options, end_offsets, reached, records_behind
from ledger.settings import Settings
from ledger.topics import topic_names

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100
# An idle fetch returns after this long (the embedded broker always waits it out): fresh
# enough for check, and four times fewer idle round trips than the worker's setting.
FETCH_MAX_WAIT_MS = 100
FETCH_RECORDS_MAX = 5_000


class BudgetStateCache:
    """The last snapshot of every scope, following ``budget-state``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topic_names(settings.topic_prefix).budget_state
        self.ready = asyncio.Event()  # set once the topic was read to the end it had at start
        self._raw: dict[str, bytes] = {}
        self._parsed: dict[str, BudgetSnapshot] = {}
        self._changed = asyncio.Condition()
        self.records_read = 0
        self.lag_records = 0
        self.updated_at = 0.0

    # -- reading -------------------------------------------------------------------

    def snapshot(self, scope_key: str) -> BudgetSnapshot | None:
        """The scope's last snapshot (None: the worker never published one)."""
        parsed = self._parsed.get(scope_key)
        if parsed is None:
            raw = self._raw.get(scope_key)
            if raw is None:
                return None
            parsed = self._parsed[scope_key] = BudgetSnapshot.model_validate_json(raw)
        return parsed

    def state(self, scope_key: str) -> BudgetState | None:
        found = self.snapshot(scope_key)
        return None if found is None else found.state

    def states(self, scope_keys: list[str] | tuple[str, ...]) -> dict[str, BudgetState]:
        """The states of ``scope_keys`` that exist."""
        found = {}
        for key in scope_keys:
            state = self.state(key)
            if state is not None:
                found[key] = state
        return found

    def all_states(self) -> Mapping[str, BudgetState]:
        """Every scope's state (parses what was not parsed yet)."""
        return {key: state for key in list(self._raw) if (state := self.state(key)) is not None}

    def scope_keys(self) -> list[str]:
        return list(self._raw)

    async def wait_applied(self, scope_key: str, source: str, offset: int, timeout_s: float) -> BudgetState | None:
        """Wait until the scope's snapshot has folded the input at (``source``, ``offset``),
        e.g. a budget command from partition 2 of ``budget-commands`` is ``c2``; its state
        then, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                snapshot = self.snapshot(scope_key)
                if snapshot is not None and snapshot.applied.get(source, -1) >= offset:
                    return snapshot.state
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return None

    # -- following -----------------------------------------------------------------

    async def follow(self, stop: asyncio.Event) -> None:
        """Read the topic from its start until ``stop`` is set."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        try:
            await consumer.topics()
            partitions = [
                TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or ())
            ]
            targets = await end_offsets(self.settings, partitions)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS_MAX)
                if batches:
                    self._take(batches)
                    async with self._changed:
                        self._changed.notify_all()
                if not self.ready.is_set() and await reached(consumer, targets):
                    self.ready.set()
                    log.info("budget state loaded: %d scopes", len(self._raw))
                self.lag_records = await records_behind(consumer)
        finally:
            await consumer.stop()

    def _take(self, batches: dict[TopicPartition, list[object]]) -> None:
        for records in batches.values():
            for record in records:
                key: bytes | None = record.key  # type: ignore[attr-defined]
                value: bytes | None = record.value  # type: ignore[attr-defined]
                if key is None:
                    continue
                scope = key.decode()
                self._parsed.pop(scope, None)
                if value is None:  # a tombstone
                    self._raw.pop(scope, None)
                else:
                    self._raw[scope] = value
                self.records_read += 1
        self.updated_at = time.time()
