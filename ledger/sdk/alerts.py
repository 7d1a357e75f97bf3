"""Subscribe to budget alerts through a consumer group of one's own.

Unlike ``ledger.alert_feed.follow_alerts`` (group-less: every follower sees every alert,
and nothing is remembered), a subscription remembers in its group how far it got, so a
restarted service continues where it stopped, and several members of one group share
the partitions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from ledger.alert_feed import FETCH_TIMEOUT_MS, topic_partitions
from ledger.domain.budgets import AlertKind, BudgetAlert
from ledger.kafka import client_options, end_offsets
from ledger.settings import Settings
from ledger.topics import topic_names

log = logging.getLogger(__name__)

GROUP_NAME_DEFAULT = "default"


class _StartWhereAsked(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partition the group never committed starts where the topic ended when
    iterating ``subscribe_alerts`` began (``from_beginning`` False), or at its start. The ends
    come from ``ledger.kafka.end_offsets``: aiokafka's own ``latest`` asks ListOffsets,
    which the embedded broker answers inside the last record batch."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        settings: Settings,
        from_beginning: bool,
        ends_at_start: dict[TopicPartition, int],
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.from_beginning = from_beginning
        self.ends_at_start = ends_at_start

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        fresh = [tp for tp in sorted(assigned) if await self.consumer.committed(tp) is None]
        if not fresh:
            return
        if self.from_beginning:
            await self.consumer.seek_to_beginning(*fresh)
            return
        unknown = [tp for tp in fresh if tp not in self.ends_at_start]  # partitions added since
        ends = {**self.ends_at_start, **(await end_offsets(self.settings, unknown))}
        for tp in fresh:
            self.consumer.seek(tp, ends[tp])


async def subscribe_alerts(
    settings: Settings | None = None,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    kinds: Iterable[AlertKind] | None = None,
    scopes: Iterable[str] | None = None,
) -> AsyncGenerator[BudgetAlert, None]:
    """Budget alerts as typed ``BudgetAlert`` records, through the consumer group
    ``group_id`` (default ``<topic prefix>alerts-default``, e.g. ``spend-ledger.alerts-default``;
    name your own per consuming service). Only ``kinds`` (``exceeded``, ``soft-threshold``,
    ``reset``, ``recovered``) and ``scopes`` (scope keys such as ``team:research``) are
    yielded when given.

    Where a group that has committed nothing yet starts: where the topic ended when
    iteration started (alerts from then on, even those published while the group forms), or
    its start with ``from_beginning``. After that the group's commits
    decide, whatever ``from_beginning`` says.

    Delivery is at least once. An alert's offset is committed when the caller asks for the
    next alert, i.e. after it finished with this one; an alert the caller was handling when
    it crashed or stopped iterating comes again to the group's next member. A duplicate
    carries the same ``alert_id`` (derived from scope, limit, window, kind and threshold),
    so deduplicate by it if a repeat matters. Records that are not valid alerts are skipped
    with a logged warning. Close the iterator (``contextlib.aclosing``) to leave the group
    promptly; the group's session timeout is ``settings.kafka_session_timeout_s``.
    """
    settings = settings if settings is not None else Settings()
    topic = topic_names(settings.topic_prefix).budget_alerts
    group = group_id if group_id is not None else f"{settings.topic_prefix}alerts-{GROUP_NAME_DEFAULT}"
    wanted_kinds = None if kinds is None else frozenset(kinds)
    wanted_scopes = None if scopes is None else frozenset(scopes)
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.kafka_heartbeat_interval_s * 1000),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    try:
        await consumer.start()
        partitions = await topic_partitions(consumer, topic)  # waits for the topic, or raises AlertTopicMissing
        ends_at_start = {} if from_beginning else await end_offsets(settings, partitions)
        consumer.subscribe([topic], listener=_StartWhereAsked(consumer, settings, from_beginning, ends_at_start))
        while True:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            done: dict[TopicPartition, int] = {}  # the next offset to read, once committed
            for tp, records in batches.items():
                for record in records:
                    alert = _alert_of(record.value, f"{topic}/{record.partition}@{record.offset}")
                    if alert is not None and _wanted(alert, wanted_kinds, wanted_scopes):
                        yield alert
                        # The caller asked for the next alert: it is done with this one.
                        done[tp] = record.offset + 1
                        await _commit(consumer, done)
                        done = {}
                    else:
                        done[tp] = record.offset + 1
            await _commit(consumer, done)
    finally:
        await consumer.stop()


def _alert_of(value: bytes | None, where: str) -> BudgetAlert | None:
    try:
        return BudgetAlert.model_validate_json(value or b"")
    except ValidationError as exc:
        log.warning("skipping %s: not a budget alert (%d errors, %s)", where, exc.error_count(), exc.errors()[0]["msg"])
        return None


def _wanted(alert: BudgetAlert, kinds: frozenset[str] | None, scopes: frozenset[str] | None) -> bool:
    return (kinds is None or alert.kind in kinds) and (scopes is None or alert.scope_key in scopes)


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """Commit what is done; a partition taken away meanwhile goes to its new owner from
    the last commit (a duplicate, never a loss)."""
    if not offsets:
        return
    assigned = consumer.assignment()
    mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    if not mine:
        return
    try:
        await consumer.commit(mine)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("could not commit alert offsets %s (%r): they will be delivered again", mine, exc)
