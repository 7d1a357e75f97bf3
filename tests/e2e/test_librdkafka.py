"""Services on librdkafka (confluent-kafka here; the Go, .NET and Node clients wrap the
same library) publish usage to the dev stack's embedded broker and read its alerts: single
events and batches are charged to the nano, whatever the producer's compression, and a
consumer group reads ``budget-alerts``."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from ledger.domain.budgets import BudgetAlert
from ledger.topics import topic_names
from tests.e2e.waiting import WAIT_S, until

TOPICS = topic_names("spend-ledger.")  # the dev stack's default prefix
FLUSH_TIMEOUT_S = 30.0
# Apache Kafka's least session timeout (group.min.session.timeout.ms); the embedded broker
# holds a JoinGroup for half the session timeout, so a group joins in about 3 s, not 23 s.
SESSION_TIMEOUT_MS = 6_000
SINGLE_EVENTS = 20

# gpt-4o-mini at 0.15 and 0.60 USD per million tokens; gpt-4o at 2.50 and 10.00.
MINI_CALL_NANOS = 450_000  # 1,000 prompt and 500 completion tokens of gpt-4o-mini
FULL_CALL_NANOS = 7_500_000  # the same call on gpt-4o


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def usage_event(event_id: str, team: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """A usage event as a service without the SDK writes it (``occurred_at`` included)."""
    return {
        "event_id": event_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "model": model,
        "team_id": team,
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
    }


def publish(producer: Producer, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Produce ``(key, value)`` records to ``usage`` and wait until the broker acknowledged
    every one of them."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for key, value in records:
        producer.produce(TOPICS.usage, json.dumps(value).encode(), key=key, on_delivery=delivered)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0, "records left unacknowledged"
    assert failures == []


def charged(admin: httpx.Client, team: str, entry_count: int) -> dict[str, Any]:
    """The team's spend in the store once it holds ``entry_count`` entries, grouped by model;
    the live budget state is checked to hold the same total."""

    def spend() -> dict[str, Any] | None:
        view: dict[str, Any] = admin.get("/v1/spend", params={"scope": f"team:{team}", "group_by": "model"}).json()
        return view if sum(row["entry_count"] for row in view["rows"]) >= entry_count else None

    view: dict[str, Any] = until(spend, f"{entry_count} entries of team:{team} in the store")

    def live_state() -> dict[str, Any] | None:
        answer = admin.get(f"/v1/budgets/team/{team}")
        state: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
        return state if state and state["entry_count"] >= entry_count else None

    live = until(live_state, f"{entry_count} entries of team:{team} in live state")
    assert live["total_spend_nanos"] == view["total_spend_nanos"]
    assert live["entry_count"] == entry_count
    return view


@pytest.mark.parametrize(
    "producer_settings",
    [
        pytest.param({}, id="librdkafka defaults"),
        pytest.param({"enable.idempotence": True}, id="idempotent"),
        *(pytest.param({"compression.type": codec}, id=codec) for codec in ("gzip", "snappy", "lz4", "zstd")),
    ],
)
def test_single_events_from_a_librdkafka_producer_are_charged_exactly(
    admin: httpx.Client, stack_broker: str, producer_settings: dict[str, Any]
) -> None:
    team = unique("rdkafka-single")
    producer = Producer({"bootstrap.servers": stack_broker, **producer_settings})
    events = [usage_event(unique("rdkafka"), team) for _ in range(SINGLE_EVENTS)]

    publish(producer, [(event["event_id"], event) for event in events])  # several records per batch

    view = charged(admin, team, SINGLE_EVENTS)
    assert view["total_spend_nanos"] == SINGLE_EVENTS * MINI_CALL_NANOS
    assert [row["entry_count"] for row in view["rows"]] == [SINGLE_EVENTS]


def test_a_usage_batch_from_a_librdkafka_producer_is_charged_per_event_and_once(
    admin: httpx.Client, stack_broker: str
) -> None:
    team = unique("rdkafka-batch")
    producer = Producer({"bootstrap.servers": stack_broker})
    models = ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini")
    events = [usage_event(unique("rdkafka"), team, model) for model in models]
    batch: dict[str, Any] = {"batch_id": unique("batch"), "events": events}
    again: dict[str, Any] = {"batch_id": unique("batch"), "events": [*events, usage_event(unique("rdkafka"), team)]}
    key = batch["batch_id"]  # one key: one partition, read in this order

    publish(producer, [(key, batch), (key, batch)])  # the batch and a retry of it
    publish(producer, [(key, again)])  # its events in another batch, and one new event

    view = charged(admin, team, len(models) + 1)
    spend_nanos = {row["groups"]["model"]: row["spend_nanos"] for row in view["rows"]}
    assert spend_nanos == {"gpt-4o-mini": 3 * MINI_CALL_NANOS, "gpt-4o": FULL_CALL_NANOS}


def test_a_transactional_producers_committed_usage_is_charged(admin: httpx.Client, stack_broker: str) -> None:
    # The embedded broker does not honour aborts (a read_committed consumer still reads an
    # aborted record), so what an aborted transaction does is not tested here.
    team = unique("rdkafka-transactions")
    producer = Producer({"bootstrap.servers": stack_broker, "transactional.id": unique("rdkafka-tx")})
    producer.init_transactions(FLUSH_TIMEOUT_S)
    producer.begin_transaction()
    event = usage_event(unique("rdkafka"), team)
    publish(producer, [(event["event_id"], event)])
    producer.commit_transaction(FLUSH_TIMEOUT_S)

    assert charged(admin, team, 1)["total_spend_nanos"] == MINI_CALL_NANOS


def test_an_event_without_occurred_at_is_charged_at_its_records_timestamp(
    admin: httpx.Client, stack_broker: str
) -> None:
    team = unique("rdkafka-timeless")
    event = usage_event(unique("rdkafka"), team)
    del event["occurred_at"]
    sent_ms = int(time.time() * 1000) - 3 * 86_400_000  # three days ago: not when it was read
    producer = Producer({"bootstrap.servers": stack_broker})
    producer.produce(TOPICS.usage, json.dumps(event).encode(), key=event["event_id"], timestamp=sent_ms)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0

    assert charged(admin, team, 1)["total_spend_nanos"] == MINI_CALL_NANOS
    entries = admin.get("/v1/spend", params={"scope": f"team:{team}", "group_by": "hour"}).json()["rows"]
    hour_start = datetime.fromtimestamp(sent_ms // 3_600_000 * 3_600, UTC)
    assert [(datetime.fromisoformat(row["groups"]["hour"]), row["entry_count"]) for row in entries] == [(hour_start, 1)]


def test_a_consumer_group_reads_an_alert_sent_before_it_joined(admin: httpx.Client, stack_broker: str) -> None:
    team = unique("rdkafka-alerts")
    budget = admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 0.0001, "budget_duration": "1d"})
    assert budget.status_code == 200, budget.text
    event = usage_event(unique("rdkafka"), team)
    publish(Producer({"bootstrap.servers": stack_broker}), [(event["event_id"], event)])
    consumer = Consumer(
        {
            "bootstrap.servers": stack_broker,
            "group.id": unique("rdkafka-group"),
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "auto.offset.reset": "earliest",  # the default, latest, starts after what was sent before the join
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([TOPICS.budget_alerts])
        message = first_alert_of(consumer, f"team:{team}")
        alert = BudgetAlert.model_validate_json(message.value() or b"")
        assert (alert.kind, alert.spend_nanos, alert.max_budget_nanos) == ("exceeded", MINI_CALL_NANOS, 100_000)

        consumer.commit(message=message, asynchronous=False)  # the group resumes after it
        position = TopicPartition(TOPICS.budget_alerts, message.partition() or 0)
        (committed,) = consumer.committed([position], timeout=FLUSH_TIMEOUT_S)
        assert committed.offset == (message.offset() or 0) + 1
    finally:
        consumer.close()


def first_alert_of(consumer: Consumer, scope_key: str) -> Message:
    """The first record keyed ``scope_key`` the consumer polls, within a bounded wait (the
    group's join included)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        assert message.error() is None, message.error()
        if message.key() == scope_key.encode():
            return message
    raise AssertionError(f"no alert of {scope_key} on {TOPICS.budget_alerts} within {WAIT_S} s")
