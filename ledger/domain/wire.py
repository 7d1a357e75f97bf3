"""Reading usage messages off the wire: one ``UsageEvent`` or a ``UsageBatch`` per message.

Nothing is dropped silently: every record that cannot become an event comes back as a
``Rejected`` with its original bytes, the stage and a reason, for the dead-letter topic.
A bad event inside a batch rejects that event only; its neighbours go on. What is wrong
with the JSON text itself (not JSON, too large, a key repeated in one object) rejects the
whole message: no event of it can be read with certainty.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from ledger.domain.adjustments import LedgerAdjustment
from ledger.domain.events import (
    BATCH_EVENTS_MAX,
    EVENT_ID_CHARS_MAX,
    FROZEN,
    SCHEMA_VERSION,
    UsageBatch,
    UsageEvent,
    with_received_time,
)

MESSAGE_BYTES_MAX = 8 * 1024 * 1024  # a full batch of 10,000 events is about 4 MiB
ERROR_TEXT_CHARS_MAX = 2_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RejectStage = Literal["decode", "validate", "price"]
RejectReason = Literal[
    "too_large",
    "malformed_json",
    "duplicate_key",
    "not_an_object",
    "unsupported_schema_version",
    "invalid_usage",
    "invalid_batch",
    "unpriced",
    "invalid_command",
    "invalid_price_book",
    "invalid_adjustment",
]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that did not become a usage event, and why."""

    original: bytes
    stage: RejectStage
    reason: RejectReason
    detail: str
    event_id: str | None = None


class DeadLetter(BaseModel):
    """What the ``dead-letter`` topic carries: the original bytes (base64), where they
    came from, the stage that refused them and why."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    original_key_b64: str | None = None
    original_value_b64: str
    stage: RejectStage
    reason: RejectReason
    detail: str = Field(max_length=ERROR_TEXT_CHARS_MAX)
    event_id: str | None = None


def dead_letter(
    rejected: Rejected, *, topic: str, key: bytes | None, partition: int | None = None, offset: int | None = None
) -> DeadLetter:
    """The dead-letter record of a rejection."""
    return DeadLetter(
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key_b64=None if key is None else base64.b64encode(key).decode(),
        original_value_b64=base64.b64encode(rejected.original).decode(),
        stage=rejected.stage,
        reason=rejected.reason,
        detail=rejected.detail[:ERROR_TEXT_CHARS_MAX],
        event_id=rejected.event_id,
    )


def field_errors(error: ValidationError) -> str:
    """``usage.prompt_tokens: Input should be greater than or equal to 0; ...``"""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "(record)"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)[:ERROR_TEXT_CHARS_MAX]


def record_time(timestamp_ms: int | None) -> datetime | None:
    """A Kafka record's timestamp (milliseconds since the epoch, negative or None when the
    record has none) as an aware datetime, exactly: what an event without ``occurred_at``
    on that record occurred at (``with_received_time``)."""
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return EPOCH + timedelta(milliseconds=timestamp_ms)


def decode_usage_message(value: bytes, received_at: datetime | None = None) -> tuple[list[UsageEvent], list[Rejected]]:
    """The events in one message, and what was rejected. Dedup is by event_id later,
    whatever the envelope. ``received_at``: the record's time, for events without one."""
    if len(value) <= MESSAGE_BYTES_MAX:
        try:  # the fast path: a well-formed message, validated straight from its bytes
            if b'"batch_id"' in value:
                valid = list(UsageBatch.model_validate_json(value).events)
            else:
                valid = [UsageEvent.model_validate_json(value)]
            # pydantic, like orjson, keeps the last of a repeated key: the slow path refuses it
            if not duplicate_keys(value, orjson.loads(value)):
                return valid, []
        except (ValidationError, orjson.JSONDecodeError):
            pass
    raw_events, rejected = split_usage_message(value)
    events: list[UsageEvent] = []
    for item in raw_events:
        checked = validate_usage(item.raw, item.where, item.original, received_at)
        if isinstance(checked, Rejected):
            rejected.append(checked)
        else:
            events.append(checked)
    return events, rejected


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One event object of a message, not yet validated: ``original`` is the message when
    it held this event alone, ``where`` names its place in a batch."""

    raw: dict[str, Any]
    original: bytes | None = None
    where: str = ""


def split_usage_message(value: bytes) -> tuple[list[RawEvent], list[Rejected]]:
    """The decode stage: the message's JSON objects, one per event, not yet validated.

    A JSON number survives this (orjson reads it as a float) exactly when it has at most 15
    significant digits; a reported cost, at most 100,000 USD to the nano, has at most 14.
    """
    if len(value) > MESSAGE_BYTES_MAX:
        return [], [Rejected(value, "decode", "too_large", f"message of {len(value)} bytes > {MESSAGE_BYTES_MAX}")]
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [Rejected(value, "decode", "malformed_json", f"not JSON: {exc}"[:ERROR_TEXT_CHARS_MAX])]
    if not isinstance(raw, dict):
        return [], [Rejected(value, "decode", "not_an_object", f"expected a JSON object, got {json_type(raw)}")]
    if duplicates := duplicate_keys(value, raw):
        event_id = None if ("event_id",) in duplicates else _event_id(raw)
        return [], [Rejected(value, "decode", "duplicate_key", duplicates_detail(duplicates), event_id)]
    if (version := raw.get("schema_version", SCHEMA_VERSION)) != SCHEMA_VERSION:
        return [], [
            Rejected(
                value,
                "decode",
                "unsupported_schema_version",
                f"schema_version {version!r} is not supported (this ledger reads {SCHEMA_VERSION})",
                _event_id(raw),
            )
        ]
    if "batch_id" not in raw:
        return [RawEvent(raw, original=value)], []
    items = raw.get("events")
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_EVENTS_MAX:
        detail = f"events must be a list of 1 to {BATCH_EVENTS_MAX} events"
        return [], [Rejected(value, "validate", "invalid_batch", detail)]
    extra = set(raw) - {"schema_version", "batch_id", "events"}
    if not isinstance(raw["batch_id"], str) or not raw["batch_id"] or extra:
        detail = "a batch is {schema_version, batch_id (a non-empty string), events}" + (
            f"; unexpected fields: {sorted(extra)}" if extra else ""
        )
        return [], [Rejected(value, "validate", "invalid_batch", detail)]
    events: list[RawEvent] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            events.append(RawEvent(item, where=f"batch {raw['batch_id']!r} events[{index}]: "))
        else:
            item_bytes = orjson.dumps(item)
            detail = f"batch {raw['batch_id']!r} events[{index}] is not an object but {json_type(item)}"
            rejected.append(Rejected(item_bytes, "decode", "not_an_object", detail))
    return events, rejected


def validate_usage(
    raw: dict[str, Any], where: str = "", original: bytes | None = None, received_at: datetime | None = None
) -> UsageEvent | Rejected:
    """The validate stage: one event object checked against ``UsageEvent``; without an
    ``occurred_at`` it occurred at ``received_at``, its record's time. A rejection keeps
    the event as it came."""
    try:
        return UsageEvent.model_validate(with_received_time(raw, received_at))
    except ValidationError as exc:
        detail = (where + field_errors(exc))[:ERROR_TEXT_CHARS_MAX]
        return Rejected(original or orjson.dumps(raw), "validate", "invalid_usage", detail, _event_id(raw))


def validate_input(
    raw: dict[str, Any], where: str = "", original: bytes | None = None, received_at: datetime | None = None
) -> UsageEvent | LedgerAdjustment | Rejected:
    """The validate stage for anything on ``usage``: a usage event, or an adjustment (an
    object with an ``adjustment_id``) from a replay."""
    if "adjustment_id" not in raw:
        return validate_usage(raw, where, original, received_at)
    try:
        return LedgerAdjustment.model_validate(raw)
    except ValidationError as exc:
        detail = (where + field_errors(exc))[:ERROR_TEXT_CHARS_MAX]
        return Rejected(original or orjson.dumps(raw), "validate", "invalid_adjustment", detail, _event_id(raw))


def dedup_id(raw: dict[str, Any]) -> str | None:
    """The id that makes a record on ``usage`` a duplicate: an adjustment's id, else the
    event's id (None when it has neither: it will be rejected)."""
    for name in ("adjustment_id", "event_id"):
        value = raw.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _event_id(raw: dict[str, Any]) -> str | None:
    # Only an id that could be valid: a megabyte "event_id" stays in the original bytes,
    # not copied beside them into the dead letter.
    event_id = raw.get("event_id")
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= EVENT_ID_CHARS_MAX else None


Location = tuple[str | int, ...]


def duplicate_keys(text: bytes, parsed: Any) -> list[Location]:
    """Where a key repeats inside one object of the JSON ``text`` (``parsed`` is orjson's
    reading of it), in document order; empty when no key does.

    JSON leaves the value of a repeated key undefined, and orjson and pydantic silently
    keep the last one: a record ``{"usage": {"prompt_tokens": 10, "prompt_tokens": 10000}}``
    would be charged for either count without a word. The check costs two C-speed passes:
    every colon of JSON text outside its strings follows one key, and orjson writes the
    colons inside strings as they are, so the text and orjson's serialization of what it
    read hold as many colons exactly when no key was dropped (a colon escaped as ``\\u003a``
    sends the text to the slow path too). Only then is the text read again to find where.
    """
    if b"\\u003" not in text and text.count(b":") == orjson.dumps(parsed).count(b":"):
        return []
    return _find_duplicate_keys(text)


class _Members(list[tuple[str, Any]]):
    """An object's members in document order, repeats kept (``json``'s pairs hook)."""


def _find_duplicate_keys(text: bytes) -> list[Location]:
    try:
        tree = json.loads(text, object_pairs_hook=_Members)
    except (ValueError, RecursionError):  # orjson read it; a deeper nesting than json's stack
        return [()]
    found: list[Location] = []
    pending: list[tuple[Location, Any]] = [((), tree)]
    while pending:  # depth first, in document order, with no recursion on deep nesting
        where, node = pending.pop()
        children: list[tuple[Location, Any]] = []
        if isinstance(node, _Members):
            seen: set[str] = set()
            for key, value in node:
                if key in seen:
                    found.append((*where, key))
                seen.add(key)
                children.append(((*where, key), value))
        elif isinstance(node, list):
            children = [((*where, index), value) for index, value in enumerate(node)]
        pending.extend(reversed(children))
    return found


def duplicates_detail(duplicates: list[Location]) -> str:
    """``key 'usage.prompt_tokens' appears more than once in its object ...``"""
    names = ", ".join(repr(".".join(str(part) for part in where) or "(record)") for where in duplicates[:10])
    return (
        f"key {names} appears more than once in its object: JSON leaves which value counts "
        "undefined, so the record is refused rather than charged with either"
    )[:ERROR_TEXT_CHARS_MAX]


def json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words (``an array``, ``null``), for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__
