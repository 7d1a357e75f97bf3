"""Follow the ``budget-alerts`` topic: every partition, no consumer group, from its end
(alerts from now on) or from its start.

A plain consumer that assigns itself the partitions, as the price follower and the
replay's ``live_states`` do, so any number of followers each see every alert and none
moves a group's offsets. Where the end is comes from ``ledger.kafka.end_offsets``
(``seek_to_end`` lands inside the last record batch on the embedded broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from ledger.domain.budgets import BudgetAlert
from ledger.kafka import client_options, end_offsets
from ledger.settings import Settings
from ledger.topics import topic_names

TOPIC_WAIT_S = 10.0  # a worker starting meanwhile creates the topics
FETCH_TIMEOUT_MS = 500


class AlertTopicMissing(RuntimeError):
    """The ``budget-alerts`` topic does not exist (no worker has run under this prefix)."""


async def follow_alerts(
    settings: Settings,
    *,
    from_beginning: bool = False,
    on_invalid: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> AsyncGenerator[BudgetAlert, None]:
    """Every alert published from now on (or, ``from_beginning``, every alert the topic
    holds, then new ones), until the caller stops iterating. A record that is not a
    ``BudgetAlert`` is passed to ``on_invalid`` with its place and reason, and skipped;
    ``on_ready`` is called once the partitions are assigned. Close the iterator
    (``contextlib.aclosing``) to stop its consumer promptly."""
    topic = topic_names(settings.topic_prefix).budget_alerts
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    try:
        await consumer.start()
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            for tp, end in (await end_offsets(settings, partitions)).items():
                consumer.seek(tp, end)
        if on_ready is not None:
            on_ready()
        while True:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            records = sorted(
                (record for batch in batches.values() for record in batch),
                key=lambda record: (record.timestamp, record.partition, record.offset),
            )
            for record in records:
                try:
                    alert = BudgetAlert.model_validate_json(record.value or b"")
                except ValidationError as exc:
                    if on_invalid is not None:
                        where = f"{topic}/{record.partition}@{record.offset}"
                        on_invalid(
                            f"{where} is not a budget alert: {exc.error_count()} errors, {exc.errors()[0]['msg']}"
                        )
                    continue
                yield alert
    finally:
        await consumer.stop()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, waiting up to TOPIC_WAIT_S for a worker to create it."""
    deadline = asyncio.get_running_loop().time() + TOPIC_WAIT_S
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, partition) for partition in sorted(found)]
        if asyncio.get_running_loop().time() > deadline:
            raise AlertTopicMissing(
                f"topic {topic} does not exist: no worker has run with SPEND_LEDGER_TOPIC_PREFIX="
                f"{topic.removesuffix('budget-alerts')!r} on this broker (start one, or `spend-ledger dev`)"
            )
        await consumer.topics()  # refreshes metadata
        await asyncio.sleep(0.2)
