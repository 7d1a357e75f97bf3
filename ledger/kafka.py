"""Kafka plumbing shared by the worker, the api, the SDK and the benchmarks: client
options from settings, and the topics the ledger needs, created if missing."""

from __future__ import annotations

import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ledger.settings import Settings
from ledger.topics import internal_topic_names, topic_names

PRICES_PARTITIONS = 1  # price books are few and ordered: newest wins


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for any aiokafka client (bootstrap servers, TLS, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = None if password is None else password.get_secret_value()
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, trusting ``kafka_ssl_cafile`` if given."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile)
    return ssl.create_default_context(cafile=cafile)


def wanted_topics(settings: Settings) -> list[NewTopic]:
    """Every topic of the ledger with its partition count and cleanup policy."""
    names = topic_names(settings.topic_prefix)
    compacted, kept_forever = set(names.compacted()), set(names.kept_forever())
    topics = []
    for name in (*names.all(), *internal_topic_names(settings.topic_prefix).all()):
        partitions = PRICES_PARTITIONS if name == names.prices else settings.topic_partitions
        configs = {}
        if name in compacted:
            configs = {"cleanup.policy": "compact"}
        elif name in kept_forever:
            configs = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
        topics.append(NewTopic(name, partitions, settings.topic_replication_factor, topic_configs=configs))
    return topics


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the ledger's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in wanted_topics(settings) if topic.name not in existing]
        created = []
        for topic in missing:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:  # another process created it meanwhile
                pass
        return created
    finally:
        await admin.close()


END_OFFSETS_TIMEOUT_S = 10.0


async def end_offsets(settings: Settings, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, from a fetch's high watermark.

    ListOffsets is not enough: the embedded broker (Tansu) answers it with the base offset
    of the partition's last record batch plus one (5 records produced as one batch report
    an end of 1), which made Faust stop restoring a table after its first changelog batch.
    A fetch response carries the true high watermark, on Tansu and on Apache Kafka alike.
    """
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        listed = await consumer.end_offsets(partitions)
        ends = {tp: 0 for tp, end in listed.items() if end == 0}  # nothing was ever written there
        probe = [tp for tp in partitions if tp not in ends]
        if probe:
            consumer.assign(probe)
            for tp in probe:
                consumer.seek(tp, listed[tp] - 1)
            deadline = time.monotonic() + END_OFFSETS_TIMEOUT_S
            while len(ends) < len(partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no fetch answer for {sorted(set(probe) - set(ends))}")
                await consumer.getmany(*[tp for tp in probe if tp not in ends], timeout_ms=200, max_records=1)
                for tp in probe:
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        ends[tp] = max(highwater, listed[tp])
        return {tp: ends[tp] for tp in partitions}
    finally:
        await consumer.stop()


async def records_on(settings: Settings, topics: tuple[str, ...] | list[str]) -> int:
    """How many records the broker holds on ``topics`` (missing ones hold none)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            if topic in existing
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
    finally:
        await consumer.stop()
    return sum((await end_offsets(settings, partitions)).values())


async def records_behind(consumer: AIOKafkaConsumer) -> int:
    """Records on the consumer's assigned partitions not read yet (by the last highwaters)."""
    behind = 0
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            behind += max(0, highwater - await consumer.position(tp))
    return behind


async def reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
    """Whether the consumer has read every partition up to its target offset."""
    for tp, end in targets.items():
        if await consumer.position(tp) < end:
            return False
    return True
