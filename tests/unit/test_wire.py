"""Usage messages off the wire: single events and batches; every rejection keeps its
original bytes and says why."""

import base64
import json
from datetime import UTC, datetime

import pytest

from ledger.domain.wire import MESSAGE_BYTES_MAX, dead_letter, decode_usage_message, record_time

EVENT = {
    "event_id": "evt-1",
    "occurred_at": "2025-11-03T09:00:00Z",
    "model": "gpt-4o",
    "team_id": "research",
    "usage": {"prompt_tokens": 100, "completion_tokens": 20},
}


def encode(value) -> bytes:
    return json.dumps(value).encode()


def test_a_single_event_message_decodes_to_one_event():
    events, rejected = decode_usage_message(encode(EVENT))
    assert [e.event_id for e in events] == ["evt-1"]
    assert rejected == []


def test_a_batch_decodes_to_its_events():
    batch = {"batch_id": "b1", "events": [{**EVENT, "event_id": f"evt-{i}"} for i in range(3)]}
    events, rejected = decode_usage_message(encode(batch))
    assert [e.event_id for e in events] == ["evt-0", "evt-1", "evt-2"]
    assert rejected == []


def test_a_bad_event_in_a_batch_rejects_only_that_event():
    bad = {**EVENT, "event_id": "evt-bad", "usage": {"prompt_tokens": -5, "completion_tokens": 1}}
    batch = {"batch_id": "b1", "events": [EVENT, bad, 17]}
    events, rejected = decode_usage_message(encode(batch))
    assert [e.event_id for e in events] == ["evt-1"]
    assert sorted((r.reason, r.event_id or "") for r in rejected) == [
        ("invalid_usage", "evt-bad"),
        ("not_an_object", ""),
    ]
    invalid = next(r for r in rejected if r.reason == "invalid_usage")
    assert "events[1]: usage.prompt_tokens: Input should be greater than or equal to 0" in invalid.detail
    assert json.loads(invalid.original) == bad


@pytest.mark.parametrize(
    ("raw", "stage", "reason"),
    [
        (b'{"event_id": "evt-1", "model": ', "decode", "malformed_json"),
        (b"", "decode", "malformed_json"),
        (b"\xff\xfe", "decode", "malformed_json"),
        (b"[1, 2]", "decode", "not_an_object"),
        (b'"just a string"', "decode", "not_an_object"),
        (encode({**EVENT, "schema_version": 2}), "decode", "unsupported_schema_version"),
        (encode({**EVENT, "usage": {"prompt_tokens": "100"}}), "validate", "invalid_usage"),
        (encode({**EVENT, "reported_cost": "NaN"}), "validate", "invalid_usage"),
        (encode(EVENT).replace(b'"usage"', b'"reported_cost": NaN, "usage"'), "decode", "malformed_json"),
        (encode({**EVENT, "occurred_at": "2025-11-03T09:00:00"}), "validate", "invalid_usage"),
        (b"[" * 100_000 + b"]" * 100_000, "decode", "malformed_json"),
        (encode({"batch_id": "b1", "events": []}), "validate", "invalid_batch"),
        (encode({"batch_id": "b1", "events": "no"}), "validate", "invalid_batch"),
    ],
)
def test_bad_messages_are_rejected_with_stage_and_reason(raw, stage, reason):
    events, rejected = decode_usage_message(raw)
    assert events == []
    assert [(r.stage, r.reason) for r in rejected] == [(stage, reason)]
    assert rejected[0].original == raw


def test_an_oversized_message_is_rejected_before_parsing():
    raw = b" " * (MESSAGE_BYTES_MAX + 1)
    events, rejected = decode_usage_message(raw)
    assert events == []
    assert rejected[0].reason == "too_large"


def test_a_dead_letter_carries_the_original_bytes_and_where_they_came_from():
    raw = b'{"event_id": "evt-9", "model": 3'
    _, (rejected,) = decode_usage_message(raw)
    record = dead_letter(rejected, topic="spend-ledger.usage", key=b"evt-9", partition=2, offset=41)
    assert base64.b64decode(record.original_value_b64) == raw
    assert base64.b64decode(record.original_key_b64 or "") == b"evt-9"
    assert (record.source_partition, record.source_offset, record.reason) == (2, 41, "malformed_json")


RECORD_MS = 1_762_160_400_123  # 2025-11-03T09:00:00.123Z
TIMELESS = {key: value for key, value in EVENT.items() if key != "occurred_at"}


def test_a_record_time_is_its_milliseconds_exactly_and_none_when_missing():
    assert record_time(RECORD_MS) == datetime(2025, 11, 3, 9, 0, 0, 123_000, tzinfo=UTC)
    assert record_time(-1) is None
    assert record_time(None) is None


def test_an_event_without_occurred_at_occurred_when_its_record_was_received():
    (event,), rejected = decode_usage_message(encode(TIMELESS), record_time(RECORD_MS))
    assert rejected == []
    assert event.occurred_at == datetime(2025, 11, 3, 9, 0, 0, 123_000, tzinfo=UTC)
    assert event.occurred_at_source == "received"


def test_in_a_batch_only_the_events_without_a_time_take_the_records():
    batch = {"batch_id": "b1", "events": [EVENT, {**TIMELESS, "event_id": "evt-2"}]}
    events, rejected = decode_usage_message(encode(batch), record_time(RECORD_MS))
    assert rejected == []
    assert [(e.event_id, e.occurred_at.isoformat(), e.occurred_at_source) for e in events] == [
        ("evt-1", "2025-11-03T09:00:00+00:00", "event"),
        ("evt-2", "2025-11-03T09:00:00.123000+00:00", "received"),
    ]


def test_an_event_with_neither_its_own_time_nor_a_records_is_refused_with_its_bytes():
    raw = encode(TIMELESS)
    events, (rejected,) = decode_usage_message(raw, None)
    assert events == []
    assert (rejected.stage, rejected.reason, rejected.event_id) == ("validate", "invalid_usage", "evt-1")
    assert "occurred_at: Field required" in rejected.detail
    assert rejected.original == raw
