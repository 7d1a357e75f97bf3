"""Real parts for integration tests: one embedded broker per test session, worker
processes per test or module, each under its own topic prefix; all stopped by pid."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.broker import EmbeddedBroker, free_port
from ledger.domain.prices import PriceBook
from ledger.domain.snapshots import BudgetSnapshot
from ledger.kafka import end_offsets, ensure_topics
from ledger.pricebooks.genai import genai_prices_book
from ledger.processes import ChildProcess
from ledger.replay.compare import Difference
from ledger.replay.engine import ReplayResult
from ledger.replay.service import check_equality
from ledger.settings import Settings
from ledger.store.location import StoreLocation
from ledger.store.projector import Projector, ProjectorStats
from ledger.store.schema import open_store
from ledger.tokenizer import count_tokens
from ledger.topics import TopicNames, internal_topic_names, topic_names
from tests.stores import lake_at, store_env

WAIT_S = 60.0
API_READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


class Ledger:
    """A ledger under one topic prefix on the session broker: its settings, its topics,
    worker processes, and ways to publish and read records."""

    def __init__(self, broker: EmbeddedBroker, log_dir: Path, partitions: int = 4, **settings: Any) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.env = {
            "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SPEND_LEDGER_TOPIC_PREFIX": self.prefix,
            "SPEND_LEDGER_TOPIC_PARTITIONS": str(partitions),
            "SPEND_LEDGER_DATA_DIR": str(log_dir / "data"),
            "SPEND_LEDGER_KAFKA_SESSION_TIMEOUT_S": "2",
            "SPEND_LEDGER_KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
            "SPEND_LEDGER_WINDOW_TICK_S": "0.2",
            "SPEND_LEDGER_LOG_LEVEL": "info",
            **{f"SPEND_LEDGER_{name.upper()}": str(value) for name, value in settings.items()},
        }
        self.settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=self.prefix, topic_partitions=partitions
        )
        self.topics: TopicNames = topic_names(self.prefix)
        self.log_dir = log_dir
        self.workers: list[ChildProcess] = []
        self.apis: list[ApiProcess] = []
        asyncio.run(ensure_topics(self.settings))

    def start_worker(self) -> ChildProcess:
        log = self.log_dir / f"worker-{self.prefix}{len(self.workers)}.log"
        worker = ChildProcess.worker(self.env, log).start()
        self.workers.append(worker)
        return worker

    def start_api(
        self, store: StoreLocation, master_key: str | None = None, ingest_key: str | None = None
    ) -> ApiProcess:
        """``spend-ledger api`` on a free loopback port with its own store, once ready."""
        api = ApiProcess(self, store, master_key, ingest_key).start()
        self.apis.append(api)
        return api

    def stop_all(self) -> None:
        for api in self.apis:
            api.stop()
        for worker in self.workers:
            worker.stop()

    def publish(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        """Send records and wait for the broker's acknowledgement."""

        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers)
            await producer.start()
            try:
                for key, value in records:
                    await producer.send(topic, value, key=key)
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(send())

    def publish_json(self, topic: str, records: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.publish(topic, [(None if key is None else key.encode(), orjson.dumps(value)) for key, value in records])

    def read(
        self, topic: str, until: Callable[[list[Any]], bool] | None = None, timeout_s: float = WAIT_S
    ) -> list[Any]:
        """Read ``topic`` from its start until ``until(records)`` holds (default: to the
        topic's end as it is now); fails on timeout."""

        async def consume() -> list[Any]:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                group_id=None,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
            )
            await consumer.start()
            records: list[Any] = []
            deadline = time.monotonic() + timeout_s
            try:
                done = until
                if done is None:
                    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
                    wanted = sum((await end_offsets(self.settings, partitions)).values())
                    done = lambda found: len(found) >= wanted  # noqa: E731
                while not done(records):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"timed out on {topic}; read {len(records)} records: {records[-5:]}")
                    batches = await consumer.getmany(timeout_ms=200)
                    for batch in batches.values():
                        records.extend(batch)
                return records
            finally:
                await consumer.stop()

        return asyncio.run(consume())

    def read_json(
        self, topic: str, until: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Like ``read``, each value decoded from JSON."""
        check = None if until is None else (lambda raw: until([orjson.loads(r.value) for r in raw]))
        records = self.read(topic, check)
        return [orjson.loads(r.value) for r in records]

    def wait_idle(self, timeout_s: float = WAIT_S) -> None:
        """Wait until the worker group has committed every input to its end: whatever
        was published has been folded (Faust commits only after flushing outputs)."""
        internal = internal_topic_names(self.prefix)
        inputs = {self.topics.usage, self.topics.budget_commands, *internal.all()}

        async def idle() -> bool:
            # A consumer of the worker's group that never joins it, only reads its commits.
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                group_id=f"{self.prefix}worker",
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                partitions = [TopicPartition(t, p) for t in inputs for p in range(self.settings.topic_partitions)]
                ends = await end_offsets(self.settings, partitions)
                for tp, end in ends.items():
                    if end > 0 and (await consumer.committed(tp) or 0) < end:
                        return False
                return True
            finally:
                await consumer.stop()

        deadline = time.monotonic() + timeout_s
        while not asyncio.run(idle()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not catch up within {timeout_s} s")
            time.sleep(0.5)

    def project(self, store: StoreLocation) -> ProjectorStats:
        """Run the projector in this process until it has read every topic to its end."""
        connection = open_store(store)
        try:
            return asyncio.run(Projector(self.settings, connection, count_tokens).run(until_caught_up=True))
        finally:
            connection.close()

    def replay_equality(
        self, store: StoreLocation, book: PriceBook | None = None
    ) -> tuple[ReplayResult, list[Difference]]:
        """Project the topics into the store to their end, then replay it under ``book``
        (default: the bundled one) and compare with live state: (the replay, differences)."""
        self.project(store)
        connection = open_store(store, read_only=True)
        try:
            return asyncio.run(check_equality(self.settings, connection, book or genai_prices_book()))
        finally:
            connection.close()

    def snapshots(self, until: Callable[[dict[str, BudgetSnapshot]], bool]) -> dict[str, BudgetSnapshot]:
        """The latest snapshot per scope on ``budget-state``, once ``until`` holds."""

        def latest(records: list[Any]) -> dict[str, BudgetSnapshot]:
            return {r.key.decode(): BudgetSnapshot.model_validate_json(r.value) for r in records if r.value}

        return latest(self.read(self.topics.budget_state, lambda records: until(latest(records))))


class ApiProcess:
    """The api process of a ``Ledger``: a free loopback port, its own store and
    (optionally) a master key and an ingest key; started once ``/readyz`` answers 200,
    stopped by pid."""

    def __init__(
        self, ledger: Ledger, store: StoreLocation, master_key: str | None = None, ingest_key: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.master_key = master_key
        self.log_path = ledger.log_dir / f"api-{ledger.prefix}{self.port}.log"
        env = {
            **ledger.env,
            "SPEND_LEDGER_API_HOST": "127.0.0.1",
            "SPEND_LEDGER_API_PORT": str(self.port),
            **store_env(store),
        }
        if master_key is not None:
            env["SPEND_LEDGER_MASTER_KEY"] = master_key
        if ingest_key is not None:
            env["SPEND_LEDGER_INGEST_KEY"] = ingest_key
        self.process = ChildProcess.command(["api"], env, self.log_path)

    def start(self, timeout_s: float = API_READY_TIMEOUT_S) -> ApiProcess:
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.process.running():
                raise AssertionError(
                    f"the api exited with {self.process.exit_code}: {self.log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.process.stop()
                raise AssertionError(f"the api was not ready within {timeout_s} s: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def running_ledger(
    broker: EmbeddedBroker, log_dir: Path, master_key: str, **settings: Any
) -> Iterator[tuple[Ledger, ApiProcess]]:
    """A worker and an api with ``master_key``, stopped by pid at the end. Budget writes
    answer once the worker applied them, and the first waits for the worker to join."""
    ledger = Ledger(broker, log_dir, **{"api_apply_wait_s": 30, **settings})
    try:
        ledger.start_worker()
        yield ledger, ledger.start_api(lake_at(log_dir), master_key)
    finally:
        ledger.stop_all()


@pytest.fixture
def make_ledger(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """A factory of ledgers on the session broker; their workers stop at the test's end."""
    made: list[Ledger] = []

    def make(**settings: Any) -> Ledger:
        ledger = Ledger(broker, tmp_path, **settings)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.stop_all()
