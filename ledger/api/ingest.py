"""``POST /v1/usage``: one event, a ``{"events": [...]}`` batch or a JSON list of events.

A batch is all or nothing: every event is validated first, and one bad event refuses the
whole request with its field errors, so a client can fix and resend it whole. Valid
events are published in our batched wire form and acknowledged only once the broker has
them. ``occurred_at`` may be left out: the event then occurred when the api received it
(``ledger.domain.events.with_received_time``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from ledger.domain.events import (
    BATCH_EVENTS_MAX,
    EVENT_ID_CHARS_MAX,
    SCHEMA_VERSION,
    UsageEvent,
    with_received_time,
)
from ledger.domain.wire import duplicate_keys, json_type

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
    if duplicates := duplicate_keys(body, raw):
        # Either value could be the one meant: refused, never charged with one of them.
        prefix: list[str | int] = ["events"] if isinstance(raw, list) else []
        fields = [
            {"loc": [*prefix, *path], "msg": "key appears more than once in its object", "type": "duplicate_key"}
            for path in duplicates[:FIELD_ERRORS_MAX]
        ]
        message = "a key appears more than once in one JSON object, so its value is ambiguous; nothing was published"
        raise BodyError(422, message, "invalid_usage", fields)
    items, where = _items(raw)
    if not items:
        raise BodyError(422, "the batch holds no events", "invalid_usage")
    if len(items) > BATCH_EVENTS_MAX:
        # A count over the spec's maxItems is a field error (422), like every other; 413 is
        # for a body too large to read.
        message = f"a batch holds at most {BATCH_EVENTS_MAX} events, got {len(items)}"
        raise BodyError(422, message, "invalid_usage", [{"loc": list(where), "msg": message, "type": "too_long"}])
    events: list[UsageEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        location = [*where, index] if where else []
        if not isinstance(item, dict):
            errors.append({"loc": location, "msg": "an event must be a JSON object", "type": "object_type"})
            continue
        try:
            events.append(UsageEvent.model_validate(with_received_time(item, received_at)))
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
        raise BodyError(422, f"expected a JSON object or array, got {json_type(raw)}", "invalid_usage")
    if "events" in raw:
        extra = set(raw) - {"events", "batch_id", "schema_version"}
        if extra:
            raise BodyError(422, f'a batch is {{"events": [...]}}; unexpected fields: {sorted(extra)}', "invalid_usage")
        if not isinstance(raw["events"], list):
            raise BodyError(422, "events must be a list of usage events", "invalid_usage")
        _check_envelope(raw)
        return raw["events"], ["events"]
    return [raw], []


def _check_envelope(batch: dict[str, Any]) -> None:
    """A batch's own fields, when given, must be what the wire form allows: they are not
    published (the api writes its own envelope), but a wrong one is a client's mistake."""
    version = batch.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        message = f"schema_version {orjson.dumps(version).decode()[:40]} is not supported (this ledger reads 1)"
        field = {"loc": ["schema_version"], "msg": message, "type": "unsupported_schema_version"}
        raise BodyError(422, message, "invalid_usage", [field])
    batch_id = batch.get("batch_id", "x")
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= EVENT_ID_CHARS_MAX:
        given = f"{len(batch_id)} characters" if isinstance(batch_id, str) else json_type(batch_id)
        message = f"batch_id must be a string of 1 to {EVENT_ID_CHARS_MAX} characters, got {given}"
        raise BodyError(422, message, "invalid_usage", [{"loc": ["batch_id"], "msg": message, "type": "batch_id"}])


def wire_events(events: list[UsageEvent]) -> list[dict[str, Any]]:
    """The events as published (validated, with defaults left out)."""
    return [orjson.loads(event.model_dump_json(exclude_defaults=True)) for event in events]
