"""Faust on our Kafka settings: broker URLs, credentials, and two adaptations of its
aiokafka consumer (see ``adapt_faust_consumer``)."""

from __future__ import annotations

from typing import Any

import faust
import faust.transport.consumer
import faust.transport.drivers.aiokafka
from aiokafka import TopicPartition
from faust.types import TP

from ledger.kafka import end_offsets, ssl_context
from ledger.settings import Settings


def faust_broker_urls(bootstrap_servers: str) -> str:
    """``host:9092,host2:9092`` as Faust's ``kafka://host:9092;kafka://host2:9092``."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip())


def faust_credentials(settings: Settings) -> Any:
    """SASL/TLS credentials for Faust, or None for plaintext."""
    context = ssl_context(settings)
    if settings.kafka_sasl_mechanism is not None:
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=None if password is None else password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return None if context is None else faust.SSLCredentials(context)


def adapt_faust_consumer(settings: Settings) -> None:
    """Two changes to Faust's aiokafka consumer, both measured on the embedded broker and
    harmless on Apache Kafka:

    - a changelog's end comes from ``ledger.kafka.end_offsets`` (see there why: without
      it, a restarted worker restored only the first batch of each changelog);
    - fetches wait at most ``kafka_fetch_max_wait_ms``. Faust fixes 1,500 ms, and Tansu
      answers a waiting fetch only when the wait is over, not when data arrives: each hop
      added about 450 ms to an alert at low load. An idle pipeline alerted in ~170 ms with
      a 100 ms wait, ~75 ms with 20 ms. Apache Kafka answers as soon as data arrives;
      there a shorter wait only means more fetch requests when idle.
    """
    thread_class = faust.transport.drivers.aiokafka.AIOKafkaConsumerThread
    create_consumer = thread_class._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create_consumer(self, transport)
        consumer._fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms  # read by start()
        return consumer

    async def _highwaters(self: Any, partitions: list[Any]) -> Any:
        if self.consumer.in_transaction:
            consumer = self._ensure_consumer()
            return {tp: consumer.last_stable_offset(tp) for tp in partitions}
        ends = await end_offsets(settings, [TopicPartition(tp.topic, tp.partition) for tp in partitions])
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in partitions}

    thread_class._highwaters = _highwaters  # type: ignore[method-assign]
    thread_class._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


class CommitGuard:
    """Our steps, not Faust's acks, decide what an input partition commits.

    Faust acks a message it skips while a worker starts or rebalances (fetched before
    its flow control resumed, or from an older generation), "so the lag does not grow",
    and counts on seeking back to the committed offset; a commit landing in between moved
    past messages nobody processed (the live tests lost events that way). The other way
    round, a message our ``GapFiller`` read directly is never acked by Faust, and Faust's
    commit stopped before it for good (a test waited in vain for the group to catch up).

    Our steps see each input partition contiguously from its committed offset (the
    ``GapFiller`` makes sure), so the offset after the last message a step finished
    (outputs handed to the producer) is exactly what may be committed. The guard forgets
    everything on a rebalance, as the consumer seeks back to the commits then.
    """

    def __init__(self, topics: set[str]) -> None:
        self._topics = topics
        self._done: dict[tuple[str, int], int] = {}

    def finished(self, topic: str, partition: int, offset: int) -> None:
        """The message at ``offset`` and every one before it in its partition are done."""
        key = (topic, partition)
        if offset + 1 > self._done.get(key, 0):
            self._done[key] = offset + 1

    def reset(self) -> None:
        self._done.clear()

    def commit_offset(self, topic: str, partition: int, acked: int | None) -> int | None:
        """The offset to commit, given the one Faust's acks would commit."""
        if topic not in self._topics:
            return acked
        return self._done.get((topic, partition))

    def partitions(self) -> list[tuple[str, int]]:
        """Input partitions with finished steps (some may have nothing new to commit)."""
        return list(self._done)

    def install(self) -> None:
        """Wrap Faust's choice of the partitions and offsets to commit."""
        consumer_class = faust.transport.consumer.Consumer
        new_offset = consumer_class._new_offset
        pending_acks = consumer_class._filter_tps_with_pending_acks
        guard = self

        def _new_offset(consumer: Any, tp: Any) -> int | None:
            # Faust's own bookkeeping still runs: it trims the list of acked offsets.
            return guard.commit_offset(tp.topic, tp.partition, new_offset(consumer, tp))

        def _filter_tps_with_pending_acks(consumer: Any, topics: Any = None) -> Any:
            tps = set(pending_acks(consumer, topics))
            for topic, partition in guard.partitions():
                tp = TP(topic, partition)
                if topics is None or tp in topics or topic in topics:
                    tps.add(tp)
            return iter(tps)

        consumer_class._new_offset = _new_offset  # type: ignore[method-assign,assignment]
        consumer_class._filter_tps_with_pending_acks = _filter_tps_with_pending_acks  # type: ignore[method-assign,assignment]
