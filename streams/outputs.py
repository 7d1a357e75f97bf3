"""What one step of an agent produces, sent as one record batch per topic partition.

Faust's ``send_soon`` and table writes cost about 60 us a record here and go through a
buffer that sends one record at a time (measured: 16,700 table writes/s, 3,800 awaited
sends/s). A step's outputs are many small records, so they go straight to aiokafka's
producer as whole batches. Faust flushes that same producer before it commits offsets,
so outputs still reach the broker before their input counts as done (at least once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class StepOutputs:
    """Records to send at the end of one step, grouped by (topic, partition)."""

    __slots__ = ("_pending", "_producer")

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer
        self._pending: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self._pending.setdefault((topic, partition), []).append((key, value))

    async def send(self) -> None:
        """Hand every record to the producer, a batch per partition. aiokafka queues one
        batch per partition and waits for the one before it to go out, so the partitions
        are handed over concurrently: a step waits about one round trip, not one per
        partition."""
        if not self._pending:
            return
        producer = self._producer()
        await asyncio.gather(
            *(
                self._send_partition(producer, topic, partition, records)
                for (topic, partition), records in self._pending.items()
            )
        )
        self._pending = {}

    @staticmethod
    async def _send_partition(
        producer: Any, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None]]
    ) -> None:
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                await producer.send_batch(batch, topic, partition=partition)
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        await producer.send_batch(batch, topic, partition=partition)
