"""``POST /v1/usage``: one event, a ``{"events": [...]}`` batch or a JSON list of events.

A batch is all or nothing: every event is validated first, and one bad event refuses the
whole request with its field errors, so a client can fix and resend it whole. Valid
events are published in our batched wire form and acknowledged only once the broker has
them. ``occurred_at`` may be left out: the api stamps the time it received the event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from ledger.domain.events import BATCH_EVENTS_MAX, UsageEvent

BODY_BYTES_MAX = 32 * 1024 * 1024
FIELD_ERRORS_MAX = 100


class BodyError(Exception):
    """A request body refused before anything was published."""

    def __init__(self, status: int, message: str, kind: str, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.fields = fields


def parse_usage_body(body: bytes, received_at: datetime) -> list[UsageEvent]:
    """Every event of a request body, validated; ``BodyError`` names what is wrong."""
    if len(body) > BODY_BYTES_MAX:
        raise BodyError(413, f"request body of {len(body)} bytes is over {BODY_BYTES_MAX}", "too_large")
    if not body.strip():
        raise BodyError(400, 'empty request body: send a usage event or {"events": [...]}', "malformed_json")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, f"request body is not valid JSON: {exc}", "malformed_json") from exc
    items, where = _items(raw)
    if not items:
        raise BodyError(422, "the batch holds no events", "invalid_usage")
    if len(items) > BATCH_EVENTS_MAX:
        raise BodyError(413, f"a batch holds at most {BATCH_EVENTS_MAX} events, got {len(items)}", "too_large")
    stamp = received_at.isoformat()
    events: list[UsageEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        location = [*where, index] if where else []
        if not isinstance(item, dict):
            errors.append({"loc": location, "msg": "an event must be a JSON object", "type": "object_type"})
            continue
        if "occurred_at" not in item:
            item = {**item, "occurred_at": stamp}
        try:
            events.append(UsageEvent.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_context=False, include_input=False):
                errors.append({"loc": [*location, *error["loc"]], "msg": error["msg"], "type": error["type"]})
    if errors:
        bad = len({tuple(error["loc"][: len(where) + 1]) for error in errors}) if where else 1
        message = f"{bad} of {len(items)} events are invalid; nothing was published"
        raise BodyError(422, message, "invalid_usage", errors[:FIELD_ERRORS_MAX])
    return events


def _items(raw: Any) -> tuple[list[Any], list[str | int]]:
    """The events of a body, and where they sit in it (for error locations)."""
    if isinstance(raw, list):
        return raw, ["events"]
    if not isinstance(raw, dict):
        raise BodyError(422, f"expected a JSON object or list, got {type(raw).__name__}", "invalid_usage")
    if "events" in raw:
        extra = set(raw) - {"events", "batch_id", "schema_version"}
        if extra:
            raise BodyError(422, f'a batch is {{"events": [...]}}; unexpected fields: {sorted(extra)}', "invalid_usage")
        if not isinstance(raw["events"], list):
            raise BodyError(422, "events must be a list of usage events", "invalid_usage")
        return raw["events"], ["events"]
    return [raw], []


def wire_events(events: list[UsageEvent]) -> list[dict[str, Any]]:
    """The events as published (validated, with defaults left out)."""
    return [orjson.loads(event.model_dump_json(exclude_defaults=True)) for event in events]
