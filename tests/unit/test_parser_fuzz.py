"""Fuzzing the worker's reading of ``usage`` messages (bounded: a few hundred examples each).

Whatever the bytes, decoding never raises: a bad record becomes a ``Rejected`` (a dead
letter) with a known stage and reason, never a crash of the worker. What is accepted is a
valid event with integer token counts within limits, the store's decoder accepts the same
events, and pricing it fails only with the typed errors the worker turns into dead letters.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.domain.events import TOKENS_PER_FIELD_MAX, UsageEvent
from ledger.domain.wire import ERROR_TEXT_CHARS_MAX, RejectReason, RejectStage, decode_usage_message, duplicate_keys
from ledger.tokenizer import count_tokens
from tests.bad_inputs import genai_prices_book_cached, good_event, worker_decode

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
EVENT_FIELDS = (*UsageEvent.model_fields, "batch_id", "adjustment_id")  # and the envelopes' ids

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", " ", "2026-11-01T12:00:00Z", "2026-11-01T12:00:00", "NaN", "-1", "1e400", "gpt-4o-mini"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


# Every record carries a time: an event without occurred_at takes it, in both readers.
RECEIVED_AT = datetime(2026, 11, 1, 12, 0, 0, 123_000, tzinfo=UTC)


def check_decoding(value: bytes, *, trust_reported_cost: bool = False) -> list[UsageEvent]:
    """The properties every message must keep; returns the events the worker charges."""
    book = genai_prices_book_cached()
    charged, rejected = worker_decode(
        value, book, count_tokens=count_tokens, trust_reported_cost=trust_reported_cost, received_at=RECEIVED_AT
    )
    for refused in rejected:
        assert refused.stage in get_args(RejectStage)
        assert refused.reason in get_args(RejectReason)
        assert 0 < len(refused.detail) <= ERROR_TEXT_CHARS_MAX
        assert refused.event_id is None or 0 < len(refused.event_id) <= 200
    for event in charged:
        assert isinstance(event, UsageEvent)
        if event.usage is not None:
            for name in TOKEN_FIELDS:
                count = getattr(event.usage, name)
                assert type(count) is int
                assert 0 <= count <= TOKENS_PER_FIELD_MAX
    # The store reads the same events as the worker: those it charges and those unpriced
    # (stored, to be charged by a replay once priced).
    stored, _ = decode_usage_message(value, RECEIVED_AT)
    unpriced = [refused.event_id for refused in rejected if refused.stage == "price"]
    assert sorted(event.event_id for event in stored) == sorted([e.event_id for e in charged] + unpriced)
    return charged


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(value: bytes):
    check_decoding(value)


@FUZZ
@given(json_values)
def test_arbitrary_json_values_never_crash_the_decoder(value: Any):
    check_decoding(json.dumps(value).encode())


def dumps(value: Any, ascii_only: bool) -> bytes:
    # json, not orjson: it writes integers beyond 64 bits, as any producer may.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one thing changed: a field set to any JSON value, removed or
    added, or one token count set to any integer."""
    base = good_event(f"fuzz-{draw(st.integers(0, 10**6))}")
    base["usage"] = dict(base["usage"])
    change = draw(st.sampled_from(["set", "remove", "tokens", "text"]))
    if change == "set":
        base[draw(st.sampled_from(EVENT_FIELDS) | st.text(max_size=8))] = draw(json_values)
    elif change == "remove":
        base.pop(draw(st.sampled_from(sorted(base))))
    elif change == "tokens":
        base["usage"][draw(st.sampled_from(TOKEN_FIELDS))] = draw(
            st.integers() | st.sampled_from([-1, 0, TOKENS_PER_FIELD_MAX, TOKENS_PER_FIELD_MAX + 1, 2**63, 2**64])
        )
    else:
        base[draw(st.sampled_from(["event_id", "model", "user_id", "team_id", "occurred_at"]))] = draw(st.text())
    return base


@FUZZ
@given(near_valid_events(), st.booleans(), st.booleans())
def test_near_valid_events_are_charged_valid_or_dead_lettered(event: dict[str, Any], ascii_only: bool, trust: bool):
    charged = check_decoding(dumps(event, ascii_only), trust_reported_cost=trust)
    assert len(charged) <= 1


@FUZZ
@given(st.lists(near_valid_events(), min_size=1, max_size=4), st.booleans())
def test_near_valid_events_in_a_batch_go_their_own_ways(events: list[dict[str, Any]], ascii_only: bool):
    ids = [f"fuzz-batch-{index}" for index in range(len(events))]
    events = [
        {**event, "event_id": event_id} if "event_id" in event else event
        for event, event_id in zip(events, ids, strict=True)
    ]
    batch = {"batch_id": "fuzz-batch", "events": [good_event("fuzz-batch-good"), *events]}
    charged = check_decoding(dumps(batch, ascii_only))
    assert "fuzz-batch-good" in [event.event_id for event in charged]  # its neighbours never sink it


@FUZZ
@given(near_valid_events(), st.data())
def test_mangled_bytes_of_a_near_valid_event_never_crash_the_decoder(event: dict[str, Any], data: st.DataObject):
    raw = bytearray(orjson.dumps(event) if _fits_orjson(event) else dumps(event, True))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        edit = data.draw(st.sampled_from(["insert", "delete", "truncate"]))
        if edit == "insert":
            raw[at:at] = data.draw(
                st.binary(min_size=1, max_size=4) | st.sampled_from([b"\\ud800", b"\xc0\xaf", b"NaN"])
            )
        elif edit == "delete":
            del raw[at : at + data.draw(st.integers(1, 4))]
        else:
            del raw[at:]
    check_decoding(bytes(raw))


def _fits_orjson(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


@FUZZ
@given(json_values.filter(lambda value: isinstance(value, dict | list)), st.data())
def test_a_repeated_key_is_found_wherever_it_is(value: Any, data: st.DataObject):
    text = json.dumps(value).encode()
    assert duplicate_keys(text, orjson.loads(text)) == []  # json.dumps of a dict repeats no key
    objects = [body for body in _objects(value) if body]
    if not objects:
        return
    target = data.draw(st.sampled_from(objects))
    key = data.draw(st.sampled_from(sorted(target)))
    marker = "\u0000fuzz-marker"
    target[marker] = None
    text = json.dumps(value).replace(json.dumps(marker) + ": null", json.dumps(key) + ": " + json.dumps(target[key]))
    found = duplicate_keys(text.encode(), orjson.loads(text))
    assert found  # the fast check saw it, and the slow one says where
    assert all(where and where[-1] == key for where in found)


def _objects(value: Any) -> list[dict[str, Any]]:
    found = []
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            found.append(node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
