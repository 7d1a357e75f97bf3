"""Usage events: what is accepted, and the field-level errors for what is not."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from ledger.domain.errors import InvalidUsage
from ledger.domain.events import (
    BATCH_EVENTS_MAX,
    TOKENS_PER_FIELD_MAX,
    UsageBatch,
    UsageEvent,
    check_event_time,
)

VALID = {
    "event_id": "evt-1",
    "occurred_at": "2025-11-03T09:00:00Z",
    "model": "gpt-4o",
    "provider": "openai",
    "user_id": "alice",
    "team_id": "research",
    "key_id": "sk-1",
    "end_user": "customer-9",
    "tags": ["prod", "chat"],
    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "cache_read_tokens": 10, "reasoning_tokens": 5},
}


def error_locations(raw: dict) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        UsageEvent.model_validate_json(json.dumps(raw))
    return [error["loc"] for error in info.value.errors()]


def with_(**changes):
    return {**VALID, **changes}


def with_usage(**changes):
    return {**VALID, "usage": {**VALID["usage"], **changes}}


def test_a_complete_event_parses_from_json():
    event = UsageEvent.model_validate_json(json.dumps(VALID))
    assert event.occurred_at == datetime(2025, 11, 3, 9, tzinfo=UTC)
    assert event.usage is not None
    assert event.usage.total_tokens == 120
    assert event.schema_version == 1


def test_an_event_names_every_scope_it_charges_global_first():
    event = UsageEvent.model_validate(VALID)
    assert event.scope_keys() == (
        "global:*",
        "user:alice",
        "team:research",
        "key:sk-1",
        "end_user:customer-9",
        "tag:prod",
        "tag:chat",
    )


def test_events_are_immutable():
    event = UsageEvent.model_validate(VALID)
    with pytest.raises(ValidationError):
        event.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        (with_usage(prompt_tokens=-1), ("usage", "prompt_tokens")),
        (with_usage(completion_tokens="12"), ("usage", "completion_tokens")),
        (with_usage(completion_tokens=12.5), ("usage", "completion_tokens")),
        (with_usage(prompt_tokens=True), ("usage", "prompt_tokens")),
        (with_usage(prompt_tokens=TOKENS_PER_FIELD_MAX + 1), ("usage", "prompt_tokens")),
        (with_usage(cache_read_tokens=500), ("usage",)),
        (with_usage(reasoning_tokens=21), ("usage",)),
        (with_usage(mystery_tokens=3), ("usage", "mystery_tokens")),
        (with_(occurred_at="2025-11-03T09:00:00"), ("occurred_at",)),
        (with_(occurred_at="1999-12-31T23:59:59Z"), ("occurred_at",)),
        (with_(occurred_at="2200-01-01T00:00:00Z"), ("occurred_at",)),
        (with_(occurred_at="not a time"), ("occurred_at",)),
        (with_(event_id=""), ("event_id",)),
        (with_(event_id="a\nb"), ("event_id",)),
        (with_(model=""), ("model",)),
        (with_(user_id=" alice"), ("user_id",)),
        (with_(team_id=17), ("team_id",)),
        (with_(tags=["a", "a"]), ("tags",)),
        (with_(tags=[f"t{i}" for i in range(33)]), ("tags",)),
        (with_(reported_cost="-0.1"), ("reported_cost",)),
        (with_(reported_cost="100001"), ("reported_cost",)),
        (with_(schema_version=2), ("schema_version",)),
        (with_(unexpected="x"), ("unexpected",)),
        ({k: v for k, v in VALID.items() if k != "model"}, ("model",)),
        ({k: v for k, v in VALID.items() if k != "usage"}, ()),
    ],
)
def test_bad_input_fails_with_a_field_level_error(raw, location):
    assert location in error_locations(raw)


def test_nan_and_infinity_are_refused_as_costs():
    for text in ('"NaN"', '"Infinity"', "NaN", "Infinity"):
        raw = json.dumps(with_(reported_cost=0)).replace('"reported_cost": 0', f'"reported_cost": {text}')
        with pytest.raises(ValidationError):
            UsageEvent.model_validate_json(raw)


def test_text_alone_or_a_reported_cost_alone_is_enough():
    base = {k: v for k, v in VALID.items() if k != "usage"}
    assert UsageEvent.model_validate({**base, "input_text": "hello"}).usage is None
    assert str(UsageEvent.model_validate({**base, "reported_cost": "0.0021"}).reported_cost) == "0.0021"


def test_a_batch_holds_one_to_ten_thousand_events():
    event = UsageEvent.model_validate(VALID)
    assert len(UsageBatch(batch_id="b1", events=(event,)).events) == 1
    with pytest.raises(ValidationError):
        UsageBatch(batch_id="b1", events=())
    with pytest.raises(ValidationError):
        UsageBatch(batch_id="b1", events=(event,) * (BATCH_EVENTS_MAX + 1))


def test_event_times_too_far_from_now_are_refused():
    now = datetime(2025, 11, 3, tzinfo=UTC)
    check_event_time(now - timedelta(days=30), now)
    with pytest.raises(InvalidUsage, match="ahead") as ahead:
        check_event_time(now + timedelta(hours=1), now)
    assert ahead.value.field == "occurred_at"
    with pytest.raises(InvalidUsage, match="days before"):
        check_event_time(now - timedelta(days=401), now)
