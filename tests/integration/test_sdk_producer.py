"""The SDK against the real embedded broker and a real worker: the async producer, the
sync wrapper, the HTTP publisher and the alert subscription."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import RequestTimedOutError

from ledger.broker import free_port
from ledger.client import LedgerConnectionError
from ledger.domain.budgets import BudgetAlert
from ledger.domain.events import UsageEvent
from ledger.kafka import end_offsets
from ledger.sdk import (
    HttpUsagePublisher,
    InvalidUsageEvent,
    Published,
    PublishUnconfirmed,
    SpendLedgerProducer,
    publish_usage,
    subscribe_alerts,
    validated_events,
)
from ledger.settings import Settings
from tests.integration.builders import MakeLedger, charged, command, has_limits, usage
from tests.integration.conftest import Ledger
from tests.stores import lake_at

EVENTS = 2_500
ALERT_WAIT_S = 60.0
MASTER_KEY = "sk-test-sdk-master-key"


def _publish(ledger: Ledger, events: list[Any]) -> Published:
    async def publish() -> Published:
        async with SpendLedgerProducer(ledger.settings) as producer:
            return await producer.publish(events)

    return asyncio.run(publish())


def _entry_event_ids(batches: list[dict[str, Any]]) -> list[str]:
    return [entry["event_id"] for batch in batches for entry in batch["entries"]]


def _usage_ends(ledger: Ledger) -> dict[TopicPartition, int]:
    partitions = [TopicPartition(ledger.topics.usage, p) for p in range(ledger.settings.topic_partitions)]
    return asyncio.run(end_offsets(ledger.settings, partitions))


def test_producer_charges_each_event_once_and_a_resend_charges_nothing(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    events = [usage(f"sdk-{n}", user=f"sdk-user-{n % 5}", prompt=50 + n % 100) for n in range(EVENTS)]
    mixed = [UsageEvent.model_validate(event) if n % 2 else event for n, event in enumerate(events)]
    wanted = {event["event_id"] for event in events}

    published = _publish(ledger, mixed)
    assert published.event_ids == [event["event_id"] for event in events]
    assert published.messages == 3  # batches of up to 1,000 events
    assert published.attempts == 1
    batches = ledger.read_json(ledger.topics.ledger_entries, lambda found: set(_entry_event_ids(found)) >= wanted)
    assert sorted(_entry_event_ids(batches)) == sorted(wanted)  # every event, none twice

    again = _publish(ledger, events)  # a retry of the whole call: same event ids
    assert again.event_ids == published.event_ids
    ledger.wait_idle()
    every_entry = _entry_event_ids(ledger.read_json(ledger.topics.ledger_entries))
    assert len(every_entry) == EVENTS
    states = ledger.snapshots(charged("global:*", EVENTS))
    assert states["global:*"].state.entry_count == EVENTS


def test_invalid_event_raises_before_anything_is_sent(make_ledger: MakeLedger, tmp_path: Path) -> None:
    ledger = make_ledger()
    before = _usage_ends(ledger)
    bad = usage("bad-1")
    bad["usage"]["prompt_tokens"] = -1
    with pytest.raises(InvalidUsageEvent) as caught:
        _publish(ledger, [usage("fine-1"), bad, usage("fine-2")])
    assert (caught.value.index, caught.value.event_id, caught.value.field) == (1, "bad-1", "usage.prompt_tokens")
    assert "bad-1" in str(caught.value)
    bad_time = {"event_id": "bad-time", "occurred_at": "yesterday", "model": "gpt-4o", "usage": {"prompt_tokens": 1}}
    with pytest.raises(InvalidUsageEvent, match="occurred_at"):
        publish_usage(bad_time, ledger.settings)
    assert _usage_ends(ledger) == before
    # Without occurred_at, as over HTTP or on Kafka, an event occurred when it was published.
    published_from = datetime.now(UTC)
    (stamped,) = validated_events({"event_id": "no-time", "model": "gpt-4o", "usage": {"prompt_tokens": 1}})
    assert stamped.occurred_at_source == "received"
    assert published_from <= stamped.occurred_at <= datetime.now(UTC)

    # The sync wrapper publishes a lone event as one message.
    assert publish_usage(usage("sync-1"), ledger.settings) == Published(["sync-1"], 1, 1)
    assert sum(_usage_ends(ledger).values()) == sum(before.values()) + 1


def test_http_publisher_posts_usage_and_reports_unconfirmed_ids(make_ledger: MakeLedger, tmp_path: Path) -> None:
    ledger = make_ledger()
    api = ledger.start_api(lake_at(tmp_path), MASTER_KEY)
    before = sum(_usage_ends(ledger).values())

    async def publish(url: str, events: list[Any]) -> Published:
        async with HttpUsagePublisher(url, MASTER_KEY, attempts_max=2) as publisher:
            return await publisher.publish(events)

    events = [usage("http-1"), UsageEvent.model_validate(usage("http-2"))]
    assert asyncio.run(publish(api.url, events)) == Published(["http-1", "http-2"], 1, 1)
    assert sum(_usage_ends(ledger).values()) == before + 1  # one batch message

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PublishUnconfirmed) as caught:
        asyncio.run(publish(nowhere, events))
    assert caught.value.event_ids == ["http-1", "http-2"]
    assert caught.value.attempts == 2
    assert isinstance(caught.value.cause, LedgerConnectionError)


def test_subscriber_gets_exceeded_alert_and_its_group_does_not_get_it_again(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    settings = ledger.settings.model_copy(update={"kafka_session_timeout_s": 2.0, "kafka_heartbeat_interval_s": 0.3})
    group = f"{ledger.prefix}alerts-test"
    scope = "team:sdk-alerts"
    late = "team:sdk-late"
    ledger.publish_json(
        ledger.topics.budget_commands,
        [command(scope, budgets=[{"max_budget_nanos": 1}]), command(late, budgets=[{"max_budget_nanos": 1}])],
    )
    ledger.snapshots(lambda states: has_limits(scope)(states) and has_limits(late)(states))
    _publish(ledger, [usage("over-1", team="sdk-alerts")])

    async def first_member() -> tuple[BudgetAlert, BudgetAlert]:
        alerts = subscribe_alerts(settings, group_id=group, from_beginning=True, scopes=[scope])
        async with aclosing(alerts):
            exceeded = await asyncio.wait_for(anext(alerts), ALERT_WAIT_S)
            reset = command(scope, action="reset")
            await asyncio.to_thread(ledger.publish_json, ledger.topics.budget_commands, [reset])
            after = await asyncio.wait_for(anext(alerts), ALERT_WAIT_S)  # commits the exceeded one
            return exceeded, after  # stops before finishing with ``after``: not committed

    async def second_member() -> list[BudgetAlert]:
        seen: list[BudgetAlert] = []
        alerts = subscribe_alerts(settings, group_id=group, from_beginning=True, scopes=[scope])
        async with aclosing(alerts):
            while not {"reset", "recovered"} <= {alert.kind for alert in seen}:
                seen.append(await asyncio.wait_for(anext(alerts), ALERT_WAIT_S))
        return seen

    exceeded, after = asyncio.run(first_member())
    assert isinstance(exceeded, BudgetAlert)
    assert (exceeded.kind, exceeded.scope_key, exceeded.trigger_id) == ("exceeded", scope, "over-1")
    assert after.kind in ("reset", "recovered")

    seen = asyncio.run(second_member())
    assert "exceeded" not in [alert.kind for alert in seen]
    assert seen[0].alert_id == after.alert_id  # at least once: the uncommitted one comes again

    # A new group without from_beginning starts where the topic ended: only alerts after that.
    async def new_group_from_now() -> BudgetAlert:
        alerts = subscribe_alerts(settings, group_id=f"{group}-new", kinds=["exceeded"])
        async with aclosing(alerts):
            first = asyncio.ensure_future(anext(alerts))
            await asyncio.sleep(1.0)  # the subscription notes where the topic ends, then joins
            await asyncio.to_thread(_publish, ledger, [usage("over-late", team="sdk-late")])
            return await asyncio.wait_for(first, ALERT_WAIT_S)

    fresh = asyncio.run(new_group_from_now())
    assert (fresh.kind, fresh.scope_key) == ("exceeded", late)  # not the older exceeded alert


class _FlakyKafka:
    """Stands in for aiokafka's producer: the first ``failures`` sends of each key fail
    with a retriable error; records what was sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((key, value))
        if sum(1 for sent_key, _ in self.sent if sent_key == key) <= self.failures:
            future.set_exception(RequestTimedOutError())
        else:
            future.set_result(None)
        return future


def _with_kafka(fake: _FlakyKafka, events: list[Any], attempts_max: int) -> Published:
    producer = SpendLedgerProducer(Settings(), batch_events_max=2, attempts_max=attempts_max)
    producer._producer = fake
    return asyncio.run(producer.publish(events))


def test_a_failed_send_is_retried_with_the_same_messages() -> None:
    fake = _FlakyKafka(failures=1)
    published = _with_kafka(fake, [usage(f"retry-{n}") for n in range(3)], attempts_max=2)
    assert published == Published(["retry-0", "retry-1", "retry-2"], 2, 2)
    first, second = fake.sent[:2], fake.sent[2:]
    assert first == second  # the same keys and bytes, so the same event ids


def test_events_still_unacknowledged_after_the_last_attempt_are_named() -> None:
    fake = _FlakyKafka(failures=3)
    with pytest.raises(PublishUnconfirmed, match="retry-0, retry-1") as caught:
        _with_kafka(fake, [usage(f"retry-{n}") for n in range(2)], attempts_max=3)
    assert caught.value.event_ids == ["retry-0", "retry-1"]
    assert caught.value.attempts == 3
    assert isinstance(caught.value.cause, RequestTimedOutError)
    assert len(fake.sent) == 3
