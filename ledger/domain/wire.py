"""Reading usage messages off the wire: one ``UsageEvent`` or a ``UsageBatch`` per message.

Nothing is dropped silently: every record that cannot become an event comes back as a
``Rejected`` with its original bytes, the stage and a reason, for the dead-letter topic.
A bad event inside a batch rejects that event only; its neighbours go on.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from ledger.domain.events import BATCH_EVENTS_MAX, FROZEN, SCHEMA_VERSION, UsageBatch, UsageEvent

MESSAGE_BYTES_MAX = 8 * 1024 * 1024  # a full batch of 10,000 events is about 4 MiB
ERROR_TEXT_CHARS_MAX = 2_000

RejectStage = Literal["decode", "validate", "price"]
RejectReason = Literal[
    "too_large",
    "malformed_json",
    "not_an_object",
    "unsupported_schema_version",
    "invalid_usage",
    "invalid_batch",
    "unpriced",
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


def decode_usage_message(value: bytes) -> tuple[list[UsageEvent], list[Rejected]]:
    """The events in one message, and what was rejected. Dedup is by event_id later,
    whatever the envelope."""
    if len(value) > MESSAGE_BYTES_MAX:
        return [], [Rejected(value, "decode", "too_large", f"message of {len(value)} bytes > {MESSAGE_BYTES_MAX}")]
    try:  # the fast path: a well-formed message, validated straight from its bytes
        if b'"batch_id"' in value:
            return list(UsageBatch.model_validate_json(value).events), []
        return [UsageEvent.model_validate_json(value)], []
    except ValidationError:
        pass
    try:
        raw = json.loads(value, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return [], [Rejected(value, "decode", "malformed_json", f"not JSON: {exc}"[:ERROR_TEXT_CHARS_MAX])]
    if not isinstance(raw, dict):
        return [], [Rejected(value, "decode", "not_an_object", f"expected a JSON object, got {type(raw).__name__}")]
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
    if "batch_id" in raw:
        return _split_batch(value, raw)
    return _one_event(value, raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _event_id(raw: dict[str, Any]) -> str | None:
    event_id = raw.get("event_id")
    return event_id if isinstance(event_id, str) and event_id else None


def _one_event(original: bytes, raw: dict[str, Any]) -> tuple[list[UsageEvent], list[Rejected]]:
    try:
        return [UsageEvent.model_validate(raw)], []
    except ValidationError as exc:
        return [], [Rejected(original, "validate", "invalid_usage", field_errors(exc), _event_id(raw))]


def _split_batch(original: bytes, raw: dict[str, Any]) -> tuple[list[UsageEvent], list[Rejected]]:
    items = raw.get("events")
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_EVENTS_MAX:
        detail = f"events must be a list of 1 to {BATCH_EVENTS_MAX} events"
        return [], [Rejected(original, "validate", "invalid_batch", detail)]
    events: list[UsageEvent] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        item_bytes = json.dumps(item, default=str).encode()
        if not isinstance(item, dict):
            rejected.append(Rejected(item_bytes, "decode", "not_an_object", f"events[{index}] is not an object"))
            continue
        try:
            events.append(UsageEvent.model_validate(item))
        except ValidationError as exc:
            detail = f"batch {raw.get('batch_id')!r} events[{index}]: {field_errors(exc)}"
            rejected.append(Rejected(item_bytes, "validate", "invalid_usage", detail, _event_id(item)))
    return events, rejected
