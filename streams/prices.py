"""The newest price book, followed from the ``prices`` topic by every worker.

Every worker needs every book, so this is a plain consumer with no group (a Faust agent
would see only its own partitions). Until a book is published, the bundled default
(genai-prices) is used. A record that is not a valid book is dead-lettered, never used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from ledger.domain.prices import PriceBook
from ledger.domain.wire import DeadLetter, Rejected, dead_letter, field_errors
from ledger.kafka import client_options, end_offsets
from ledger.settings import Settings

log = logging.getLogger(__name__)

PRICE_MESSAGE_BYTES_MAX = 64 * 1024 * 1024


class PriceFollower:
    """Holds the book to price with; ``ready`` is set once the topic was read to its end."""

    def __init__(self, settings: Settings, topic: str, default_book: Callable[[], PriceBook]) -> None:
        self._settings = settings
        self._topic = topic
        self._default_book = default_book
        self._published: PriceBook | None = None
        self.ready = asyncio.Event()
        self.rejected: list[DeadLetter] = []  # for the worker to publish to dead-letter

    @property
    def book(self) -> PriceBook:
        """The newest published book, or the bundled default."""
        return self._published if self._published is not None else self._default_book()

    async def follow(self) -> None:
        """Read the topic from its start and keep following it, until cancelled."""
        self._default_book()  # build it before traffic, not on the first event
        consumer = AIOKafkaConsumer(
            **client_options(self._settings),
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=PRICE_MESSAGE_BYTES_MAX,
            fetch_max_bytes=PRICE_MESSAGE_BYTES_MAX,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self._topic, p) for p in sorted(await self._partitions(consumer))]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await end_offsets(self._settings, partitions)
            pending = {tp for tp, end in ends.items() if end > 0}
            if not pending:
                self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        self._take(record.value or b"", record.key, tp.partition, record.offset)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                if not pending and not self.ready.is_set():
                    log.info("price book: %s (%s)", self.book.book_id, self.book.version)
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(100):
            partitions = consumer.partitions_for_topic(self._topic)
            if partitions:
                return set(partitions)
            await consumer.topics()  # refreshes metadata
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {self._topic} has no partitions; were the topics created?")

    def _take(self, value: bytes, key: bytes | None, partition: int, offset: int) -> None:
        try:
            book = PriceBook.model_validate_json(value)
        except ValidationError as exc:
            detail = field_errors(exc)
            log.warning("price book at %s/%d@%d refused: %s", self._topic, partition, offset, detail)
            rejected = Rejected(value, "validate", "invalid_price_book", detail)
            self.rejected.append(dead_letter(rejected, topic=self._topic, key=key, partition=partition, offset=offset))
            return
        self._published = book
        if self.ready.is_set():
            log.warning("now pricing with book %s (%s)", book.book_id, book.version)
