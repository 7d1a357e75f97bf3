"""What the api process runs besides HTTP: the producer, the budget-state follower and the
projector (the store's single writer), started and stopped together."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from ledger.api.admission_service import AdmissionService
from ledger.api.auth import Keys
from ledger.api.state import BudgetStateCache
from ledger.domain.budgets import BudgetCommand
from ledger.kafka import client_options, ensure_topics
from ledger.publishing import usage_messages
from ledger.settings import Settings
from ledger.store.location import StoreLocation, store_location
from ledger.store.positions import reconcile_log
from ledger.store.projector import Projector, input_topics
from ledger.store.schema import cursor, open_store
from ledger.store.writer_lock import writer_lock
from ledger.tokenizer import count_tokens
from ledger.topics import TopicNames, topic_names

log = logging.getLogger(__name__)

PRODUCER_REQUEST_BYTES_MAX = 16 * 1024 * 1024
PRODUCER_LINGER_MS = 1
TASKS_STOP_TIMEOUT_S = 5.0
PRODUCER_TIMEOUT_MS = 10_000  # a write the broker does not acknowledge by then answers 503
STARTUP_TIMEOUT_S = 60.0
PROJECTOR_FETCH_WAIT_MS = 250


@dataclass(frozen=True, slots=True)
class Published:
    """Where the broker put a record: (partition, offset)."""

    partition: int
    offset: int


class ApiServices:
    """The api's long-lived parts. ``start`` returns once the broker answers; ``ready`` is
    set when budget state was read to its end and the projector runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names: TopicNames = topic_names(settings.topic_prefix)
        self.keys = Keys(
            master=None if settings.master_key is None else settings.master_key.get_secret_value(),
            ingest=None if settings.ingest_key is None else settings.ingest_key.get_secret_value(),
        )
        self.budget_state = BudgetStateCache(settings)
        self.admission = AdmissionService(settings, self.budget_state, self.publish_record)
        self.store: duckdb.DuckDBPyConnection | None = None  # the readers' (``reader``)
        self._projector_store: duckdb.DuckDBPyConnection | None = None
        self.location: StoreLocation | None = None
        self._resources = ExitStack()
        self.projector: Projector | None = None
        self.events_accepted = 0
        self.started_at = time.time()
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[object]] = []
        self._freezer: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    @property
    def ready(self) -> bool:
        return (
            self._producer is not None
            and self.budget_state.ready.is_set()
            and self.admission.ready.is_set()
            and self.failure is None
            and all(not task.done() for task in self._tasks)
        )

    async def start(self) -> None:
        await asyncio.wait_for(ensure_topics(self.settings), STARTUP_TIMEOUT_S)
        # The catalog first (an embedded one this api had to start stops with it).
        self.location = self._resources.enter_context(store_location(self.settings))
        self._resources.enter_context(writer_lock(self.location))  # one writer per store
        self.store = open_store(self.location)
        # First onto the broker's current log (a restarted dev broker's is new): the
        # admission follower starts from the stored positions that load() reads.
        await asyncio.wait_for(reconcile_log(self.settings, self.store, input_topics(self.names)), STARTUP_TIMEOUT_S)
        self.admission.load(self.store, datetime.now(UTC))  # before the projector moves on
        # The api's projector is not on anyone's hot path: fewer, longer idle fetches. It
        # writes through a connection of its own (the projector sets it to one thread).
        self._projector_store = open_store(self.location)
        self.projector = Projector(
            self.settings, self._projector_store, count_tokens, fetch_max_wait_ms=PROJECTOR_FETCH_WAIT_MS
        )
        producer = AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            linger_ms=PRODUCER_LINGER_MS,
            max_request_size=PRODUCER_REQUEST_BYTES_MAX,
            request_timeout_ms=PRODUCER_TIMEOUT_MS,
        )
        await producer.start()
        self._producer = producer
        self._tasks = [
            asyncio.create_task(self._guard("budget-state follower", self.budget_state.follow(self._stop))),
            asyncio.create_task(self._guard("projector", self.projector.run(self._stop))),
            asyncio.create_task(self._guard("admission follower", self.admission.follow(self._stop))),
            asyncio.create_task(self._guard("admission sweeper", self.admission.sweep(self._stop, self.reader))),
        ]
        self._freezer = asyncio.create_task(self._freeze_once_loaded())

    async def _freeze_once_loaded(self) -> None:
        """Move what was loaded at start out of the garbage collector's sight: a full
        collection over every parsed state stalled requests for 66-190 ms (bench.check)."""
        await self.budget_state.ready.wait()
        gc.collect()
        gc.freeze()

    async def _guard(self, name: str, work: object) -> None:
        try:
            await work  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            log.exception("the %s stopped: %r", name, exc)

    async def stop(self) -> None:
        self._stop.set()
        if self._freezer is not None:
            self._freezer.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TASKS_STOP_TIMEOUT_S)
            for task in self._tasks:
                task.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        for connection in (self._projector_store, self.store):
            if connection is not None:
                connection.close()
        self._projector_store = self.store = None
        self._resources.close()

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own onto the store, for one request: its reads see one
        snapshot, whole projector commits only, however many statements it runs (closing
        it ends the transaction)."""
        if self.store is None:
            raise RuntimeError("the store is not open")
        own = cursor(self.store)
        own.execute("BEGIN TRANSACTION")
        return own

    # -- publishing ------------------------------------------------------------------

    def _ready_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the producer is not started")
        return self._producer

    async def publish_usage(self, events: Sequence[dict[str, object]]) -> None:
        """Publish events (wire shape) to ``usage``; returns once the broker acknowledged
        every message."""
        producer = self._ready_producer()
        futures = [await producer.send(self.names.usage, value, key=key) for key, value in usage_messages(list(events))]
        await asyncio.gather(*futures)
        self.events_accepted += len(events)

    async def publish_record(self, topic: str, key: bytes, value: bytes) -> None:
        """Publish one record; returns once the broker acknowledged it."""
        await self._ready_producer().send_and_wait(topic, value, key=key)

    async def publish_command(self, command: BudgetCommand) -> Published:
        """Publish a budget command keyed by its scope; where it landed."""
        producer = self._ready_producer()
        value = command.model_dump_json().encode()
        metadata: RecordMetadata = await producer.send_and_wait(
            self.names.budget_commands, value, key=command.scope_key.encode()
        )
        return Published(metadata.partition, metadata.offset)
