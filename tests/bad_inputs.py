"""A corpus of bad usage records, as raw bytes, each with what the ledger must do with it.

Every kind is sent as it is through Kafka (the ``usage`` topic: the worker answers with a
dead letter naming the stage and a reason, and keeps the original bytes) and through HTTP
(``POST /v1/usage``: a 4xx naming what is wrong, nothing published). A few kinds belong to
one channel only, and say why. Limits are the code's own constants, tested at their edges.

Decisions this corpus pins down:

- A key repeated in one JSON object (``{"usage": {"prompt_tokens": 10, "prompt_tokens":
  10000}}``) is refused: JSON leaves the value undefined and both parsers here would keep
  the last one silently. On Kafka the whole message is dead-lettered (``duplicate_key``,
  decode stage), batch or not, like any other fault of the JSON text; over HTTP it is a
  422 naming the repeated key's location.
- A batch on Kafka with one bad event among good ones: the bad event is dead-lettered
  alone (its original is that event's JSON) and the good ones are charged. Over HTTP a
  batch is all or nothing: one bad event refuses the request, nothing is published.
- Refused by type, not coerced: token counts as strings, floats (even ``100.0``) or
  booleans; times without a time zone.
- Accepted, so not in this corpus: RTL marks and zero-width characters inside ids (valid
  text; an id is compared by its exact code points, so a look-alike id is simply another
  scope), a missing ``occurred_at`` (the event occurred when it was received: the
  api's clock over HTTP, the record's timestamp on Kafka; see ``test_wire``), a model
  no price book knows over HTTP (pricing is the worker's job: it dead-letters it as
  ``unpriced``, see ``unpriced_model``), a number as ``occurred_at``
  (pydantic reads a unix time, seconds or milliseconds by magnitude; the range check
  still holds), and ``schema_version`` ``true`` or ``1.0`` (pydantic's literal check
  compares by equality: read as 1, by the worker and the store alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import orjson

from ledger.api.ingest import BODY_BYTES_MAX
from ledger.domain.adjustments import LedgerAdjustment
from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import (
    BATCH_EVENTS_MAX,
    EVENT_ID_CHARS_MAX,
    MODEL_NAME_CHARS_MAX,
    REPORTED_COST_USD_MAX,
    TEXT_CHARS_MAX,
    TOKENS_PER_FIELD_MAX,
    UsageEvent,
)
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import price_event
from ledger.domain.wire import MESSAGE_BYTES_MAX, Rejected, split_usage_message, validate_input
from ledger.pricebooks.genai import genai_prices_book

OCCURRED_AT = "2026-11-01T12:00:00Z"
GOOD_USER = "corpus-good"
BAD_USER = "corpus-bad"


@dataclass(frozen=True)
class Letter:
    """The dead letter the worker must write: its stage, reason, and a part of its detail
    that names what is wrong."""

    stage: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Refusal:
    """What ``POST /v1/usage`` must answer: the status, the error type, and ``text`` in the
    error's message or one of its field errors; ``loc``: a field error at that location
    (``None`` when the body as a whole is wrong and no field can be named)."""

    status: int
    type: str
    text: str
    loc: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class BadInput:
    """One kind of bad record. ``letter`` is None for a kind HTTP only can carry (a content
    type), ``refusal`` None for one that is bad on Kafka only; ``good_events`` are events
    of the same message the worker still charges (a batch's good neighbours), and
    ``letter_original`` the bytes the dead letter keeps when they are not the whole body."""

    name: str
    body: bytes
    letter: Letter | None
    refusal: Refusal | None
    content_type: str = "application/json"
    good_events: tuple[dict[str, Any], ...] = ()
    letter_original: bytes | None = None

    @property
    def original(self) -> bytes:
        return self.body if self.letter_original is None else self.letter_original


def event(name: str, **changes: Any) -> dict[str, Any]:
    """A valid event of the bad user; ``changes`` make it bad (``None`` removes a field)."""
    base: dict[str, Any] = {
        "event_id": f"bad-{name}",
        "occurred_at": OCCURRED_AT,
        "model": "gpt-4o-mini",
        "user_id": BAD_USER,
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def good_event(event_id: str) -> dict[str, Any]:
    """A valid event of the good user (charged when it rides in a batch with bad ones)."""
    return {
        "event_id": event_id,
        "occurred_at": OCCURRED_AT,
        "model": "gpt-4o-mini",
        "user_id": GOOD_USER,
        "usage": {"prompt_tokens": 300, "completion_tokens": 40},
    }


def tokens(name: str, **usage: Any) -> dict[str, Any]:
    return event(name, usage={"prompt_tokens": 100, "completion_tokens": 20, **usage})


def text(value: dict[str, Any] | list[Any]) -> bytes:
    return orjson.dumps(value)


def with_raw(name: str, field_name: str, raw_value: bytes, **changes: Any) -> bytes:
    """An event whose ``field_name`` holds ``raw_value`` written as is (NaN, 1e400, ...),
    which no JSON encoder would write."""
    marker = "__RAW__"
    body = text(event(name, **{field_name: marker}, **changes))
    return body.replace(f'"{marker}"'.encode(), raw_value)


def with_raw_tokens(name: str, raw_value: bytes) -> bytes:
    body = text(tokens(name, prompt_tokens="__RAW__"))
    return body.replace(b'"__RAW__"', raw_value)


def sized(name: str, size: int) -> bytes:
    """An event exactly ``size`` bytes long, made so by a model name that is far too long."""
    body = text(event(name, model=""))
    return text(event(name, model="m" * (size - len(body))))


def batch(batch_id: str, events: Any, **envelope: Any) -> dict[str, Any]:
    return {"batch_id": batch_id, "events": events, **envelope}


MALFORMED = Letter("decode", "malformed_json", "not JSON")
NOT_JSON = Refusal(400, "malformed_json", "not valid JSON")


def invalid(detail: str) -> Letter:
    return Letter("validate", "invalid_usage", detail)


def field_error(loc: tuple[str | int, ...], text: str, status: int = 422) -> Refusal:
    return Refusal(status, "invalid_usage", text, loc)


def not_an_object(kind: str) -> Letter:
    return Letter("decode", "not_an_object", f"expected a JSON object, got {kind}")


_BAD_IN_BATCH = tokens("in-batch", prompt_tokens=-5)
_NOT_AN_OBJECT_IN_BATCH = 17
_DUPLICATE_IN_BATCH = text(
    batch("bad-batch-duplicate", [good_event("good-batch-dup-0"), event("dup-in-batch")])
).replace(b'"model":"gpt-4o-mini","user_id":"corpus-bad"', b'"model":"gpt-4o-mini","model":"o1","user_id":"corpus-bad"')

CORPUS: list[BadInput] = [
    # -- the JSON text ------------------------------------------------------------------
    BadInput("truncated_json", text(event("truncated"))[:60], MALFORMED, NOT_JSON),
    BadInput("not_json_at_all", b"event_id=bad-form&model=gpt-4o-mini", MALFORMED, NOT_JSON),
    BadInput(
        "empty_body",
        b"",
        Letter("decode", "malformed_json", "empty document"),
        Refusal(400, "malformed_json", "empty request body"),
    ),
    BadInput(
        "whitespace_only",
        b" \n\t ",
        Letter("decode", "malformed_json", "not JSON"),
        Refusal(400, "malformed_json", "empty request body"),
    ),
    BadInput("trailing_garbage", text(event("trailing")) + b" {}", MALFORMED, NOT_JSON),
    BadInput("single_quotes", text(event("quotes")).replace(b'"', b"'"), MALFORMED, NOT_JSON),
    BadInput(
        "utf8_byte_order_mark",
        b"\xef\xbb\xbf" + text(event("bom")),
        Letter("decode", "malformed_json", "byte order mark"),
        Refusal(400, "malformed_json", "byte order mark"),
    ),
    BadInput("utf16_encoded", text(event("utf16")).decode().encode("utf-16"), MALFORMED, NOT_JSON),
    # -- JSON, but not an object ----------------------------------------------------------
    BadInput(
        "json_array_of_numbers",
        b"[1, 2, 3]",
        not_an_object("an array"),
        # Over HTTP a JSON array is a list of events: each item is named.
        Refusal(422, "invalid_usage", "an event must be a JSON object", ("events", 0)),
    ),
    BadInput(
        "json_string",
        b'"gpt-4o-mini"',
        not_an_object("a string"),
        Refusal(422, "invalid_usage", "expected a JSON object or array, got a string"),
    ),
    BadInput(
        "json_number",
        b"42",
        not_an_object("a number"),
        Refusal(422, "invalid_usage", "expected a JSON object or array, got a number"),
    ),
    BadInput(
        "json_null",
        b"null",
        not_an_object("null"),
        Refusal(422, "invalid_usage", "expected a JSON object or array, got null"),
    ),
    BadInput(
        "json_boolean",
        b"true",
        not_an_object("a boolean"),
        Refusal(422, "invalid_usage", "expected a JSON object or array, got a boolean"),
    ),
    BadInput("empty_object", b"{}", invalid("event_id: Field required"), field_error(("event_id",), "Field required")),
    # -- wrong types ------------------------------------------------------------------------
    BadInput(
        "tokens_as_string",
        text(tokens("tokens-string", prompt_tokens="100")),
        invalid("usage.prompt_tokens: Input should be a valid integer"),
        field_error(("usage", "prompt_tokens"), "valid integer"),
    ),
    BadInput(
        "tokens_as_float",
        text(tokens("tokens-float", completion_tokens=20.5)),
        invalid("usage.completion_tokens: Input should be a valid integer"),
        field_error(("usage", "completion_tokens"), "valid integer"),
    ),
    BadInput(
        "tokens_as_integral_float",
        text(tokens("tokens-integral-float", prompt_tokens=100.0)),
        invalid("usage.prompt_tokens: Input should be a valid integer"),
        field_error(("usage", "prompt_tokens"), "valid integer"),
    ),
    BadInput(
        "tokens_as_boolean",
        text(tokens("tokens-bool", prompt_tokens=True)),
        invalid("usage.prompt_tokens: Input should be a valid integer"),
        field_error(("usage", "prompt_tokens"), "valid integer"),
    ),
    BadInput(
        "model_as_number",
        text(event("model-number", model=4)),
        invalid("model: Input should be a valid string"),
        field_error(("model",), "valid string"),
    ),
    BadInput(
        "user_id_as_object",
        text(event("user-object", user_id={"id": "u"})),
        invalid("user_id: Input should be a valid string"),
        field_error(("user_id",), "valid string"),
    ),
    BadInput(
        "usage_as_array",
        text(event("usage-array", usage=[100, 20])),
        invalid("usage: Input should be a valid dictionary"),
        field_error(("usage",), "valid dictionary"),
    ),
    BadInput(
        "tags_as_string",
        text(event("tags-string", tags="prod")),
        invalid("tags: Input should be a valid tuple"),
        field_error(("tags",), "valid tuple"),
    ),
    BadInput(
        "metadata_nested_object",
        text(event("metadata-nested", metadata={"route": {"path": "/chat"}})),
        invalid("metadata.route"),
        field_error(("metadata", "route"), "valid string"),
    ),
    BadInput(
        "occurred_at_garbage",
        text(event("when-garbage", occurred_at="yesterday")),
        invalid("occurred_at: Input should be a valid datetime"),
        field_error(("occurred_at",), "valid datetime"),
    ),
    BadInput(
        "occurred_at_as_object",
        text(event("when-object", occurred_at={"year": 2026})),
        invalid("occurred_at: Input should be a valid datetime"),
        field_error(("occurred_at",), "valid datetime"),
    ),
    # -- missing fields ---------------------------------------------------------------------
    BadInput(
        "missing_event_id",
        text(event("no-id", event_id=None)),
        invalid("event_id: Field required"),
        field_error(("event_id",), "Field required"),
    ),
    BadInput(
        "missing_model",
        text(event("no-model", model=None)),
        invalid("model: Field required"),
        field_error(("model",), "Field required"),
    ),
    BadInput(
        "no_usage_text_or_cost",
        text(event("nothing-to-charge", usage=None)),
        invalid("an event needs usage, input_text/output_text, or reported_cost"),
        Refusal(422, "invalid_usage", "an event needs usage, input_text/output_text, or reported_cost", ()),
    ),
    # -- huge strings -----------------------------------------------------------------------
    BadInput(
        "model_name_of_one_megabyte",
        text(event("huge-model", model="m" * 1_000_000)),
        invalid(f"model: String should have at most {MODEL_NAME_CHARS_MAX} characters"),
        field_error(("model",), f"at most {MODEL_NAME_CHARS_MAX} characters"),
    ),
    BadInput(
        # Its dead letter must not carry the id a second time beside the original bytes:
        # that would be over the worker's 16 MiB producer limit.
        "event_id_of_seven_and_a_half_megabytes",
        text(event("huge-id", event_id="e" * 7_500_000)),
        invalid(f"event_id: String should have at most {EVENT_ID_CHARS_MAX} characters"),
        field_error(("event_id",), f"at most {EVENT_ID_CHARS_MAX} characters"),
    ),
    BadInput(
        "event_id_one_over_limit",
        text(event("x", event_id="e" * (EVENT_ID_CHARS_MAX + 1))),
        invalid(f"event_id: String should have at most {EVENT_ID_CHARS_MAX} characters"),
        field_error(("event_id",), f"at most {EVENT_ID_CHARS_MAX} characters"),
    ),
    BadInput(
        "input_text_one_over_limit",
        text(event("huge-text", usage=None, input_text="a" * (TEXT_CHARS_MAX + 1))),
        invalid(f"input_text: String should have at most {TEXT_CHARS_MAX} characters"),
        field_error(("input_text",), f"at most {TEXT_CHARS_MAX} characters"),
    ),
    BadInput(
        "message_one_byte_over_wire_limit",
        sized("over-wire-limit", MESSAGE_BYTES_MAX + 1),
        Letter("decode", "too_large", f"message of {MESSAGE_BYTES_MAX + 1} bytes > {MESSAGE_BYTES_MAX}"),
        # Under the api's body limit: the api reads it and names the field.
        field_error(("model",), f"at most {MODEL_NAME_CHARS_MAX} characters"),
    ),
    BadInput(
        "body_over_api_limit",
        b"",  # sent as a declared length only: see ``over_api_limit_request``
        None,  # larger than any message the broker takes
        Refusal(413, "too_large", f"is over {BODY_BYTES_MAX}"),
    ),
    # -- deep nesting -----------------------------------------------------------------------
    BadInput(
        "arrays_nested_ten_thousand_deep",
        b'{"event_id": "bad-deep", "metadata": {"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        Letter("decode", "malformed_json", "depth limit exceeded"),
        Refusal(400, "malformed_json", "depth limit exceeded"),
    ),
    BadInput(
        "objects_nested_ten_thousand_deep",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
        Letter("decode", "malformed_json", "depth limit exceeded"),
        Refusal(400, "malformed_json", "depth limit exceeded"),
    ),
    # -- NaN and infinities -----------------------------------------------------------------
    BadInput("nan_literal", with_raw_tokens("nan", b"NaN"), MALFORMED, NOT_JSON),
    BadInput("infinity_literal", with_raw_tokens("inf", b"Infinity"), MALFORMED, NOT_JSON),
    BadInput("negative_infinity_literal", with_raw("neg-inf", "reported_cost", b"-Infinity"), MALFORMED, NOT_JSON),
    BadInput(
        "number_beyond_a_double",
        with_raw_tokens("beyond-double", b"1e400"),
        Letter("decode", "malformed_json", "infinity"),
        Refusal(400, "malformed_json", "infinity"),
    ),
    BadInput(
        "nan_as_string_cost",
        text(event("nan-cost", usage=None, reported_cost="NaN")),
        invalid("reported_cost: Input should be a finite number"),
        field_error(("reported_cost",), "finite number"),
    ),
    # -- token counts -----------------------------------------------------------------------
    BadInput(
        "negative_tokens",
        text(tokens("negative", prompt_tokens=-5)),
        invalid("usage.prompt_tokens: Input should be greater than or equal to 0"),
        field_error(("usage", "prompt_tokens"), "greater than or equal to 0"),
    ),
    BadInput(
        "tokens_one_over_limit",
        text(tokens("over-limit", completion_tokens=TOKENS_PER_FIELD_MAX + 1)),
        invalid(f"usage.completion_tokens: Input should be less than or equal to {TOKENS_PER_FIELD_MAX}"),
        field_error(("usage", "completion_tokens"), f"less than or equal to {TOKENS_PER_FIELD_MAX}"),
    ),
    BadInput(
        "tokens_two_to_the_63",
        text(tokens("2-63", prompt_tokens=2**63)),
        invalid(f"usage.prompt_tokens: Input should be less than or equal to {TOKENS_PER_FIELD_MAX}"),
        field_error(("usage", "prompt_tokens"), f"less than or equal to {TOKENS_PER_FIELD_MAX}"),
    ),
    BadInput(
        # Beyond 64 bits orjson reads a float, so the count is refused as not an integer.
        "tokens_of_thirty_digits",
        with_raw_tokens("30-digits", b"1" + b"0" * 29),
        invalid("usage.prompt_tokens: Input should be a valid integer"),
        field_error(("usage", "prompt_tokens"), "valid integer"),
    ),
    BadInput(
        "cached_tokens_over_prompt_tokens",
        text(tokens("cache-over", cache_read_tokens=150)),
        invalid("usage: Value error, cache_read_tokens (150) + cache_write_tokens (0) exceed prompt_tokens (100)"),
        field_error(("usage",), "exceed prompt_tokens"),
    ),
    BadInput(
        "reasoning_tokens_over_completion_tokens",
        text(tokens("reasoning-over", reasoning_tokens=21)),
        invalid("usage: Value error, reasoning_tokens (21) exceed completion_tokens (20)"),
        field_error(("usage",), "exceed completion_tokens"),
    ),
    BadInput(
        "negative_reported_cost",
        text(event("cost-negative", usage=None, reported_cost="-0.01")),
        invalid("reported_cost: Input should be greater than or equal to 0"),
        field_error(("reported_cost",), "greater than or equal to 0"),
    ),
    BadInput(
        "absurd_reported_cost",
        text(event("cost-absurd", usage=None, reported_cost=1e12)),
        invalid(f"reported_cost: Input should be less than or equal to {REPORTED_COST_USD_MAX}"),
        field_error(("reported_cost",), f"less than or equal to {REPORTED_COST_USD_MAX}"),
    ),
    # -- times ------------------------------------------------------------------------------
    BadInput(
        "occurred_at_year_1",
        text(event("year-1", occurred_at="0001-01-01T00:00:00Z")),
        invalid("occurred_at: Value error, 0001-01-01T00:00:00+00:00 is outside [2000-01-01, 2200-01-01)"),
        field_error(("occurred_at",), "is outside [2000-01-01, 2200-01-01)"),
    ),
    BadInput(
        "occurred_at_year_9999",
        text(event("year-9999", occurred_at="9999-12-31T23:59:59Z")),
        invalid("occurred_at: Value error, 9999-12-31T23:59:59+00:00 is outside"),
        field_error(("occurred_at",), "is outside [2000-01-01, 2200-01-01)"),
    ),
    BadInput(
        "occurred_at_one_second_before_2000",
        text(event("before-2000", occurred_at="1999-12-31T23:59:59Z")),
        invalid("occurred_at: Value error, 1999-12-31T23:59:59+00:00 is outside"),
        field_error(("occurred_at",), "is outside"),
    ),
    BadInput(
        "occurred_at_at_the_upper_bound",
        text(event("at-2200", occurred_at="2200-01-01T00:00:00Z")),
        invalid("occurred_at: Value error, 2200-01-01T00:00:00+00:00 is outside"),
        field_error(("occurred_at",), "is outside"),
    ),
    BadInput(
        "occurred_at_without_time_zone",
        text(event("naive", occurred_at="2026-11-01T12:00:00")),
        invalid("occurred_at: Input should have timezone info"),
        field_error(("occurred_at",), "timezone info"),
    ),
    # -- unknown fields and versions ---------------------------------------------------------
    BadInput(
        "unknown_scope_kind_field",
        text(event("org-scope", org_id="acme")),
        invalid("org_id: Extra inputs are not permitted"),
        field_error(("org_id",), "Extra inputs are not permitted"),
    ),
    BadInput(
        "unknown_token_kind",
        text(tokens("audio", audio_tokens=5)),
        invalid("usage.audio_tokens: Extra inputs are not permitted"),
        field_error(("usage", "audio_tokens"), "Extra inputs are not permitted"),
    ),
    BadInput(
        "schema_version_2",
        text(event("v2", schema_version=2)),
        Letter("decode", "unsupported_schema_version", "schema_version 2 is not supported"),
        field_error(("schema_version",), "Input should be 1"),
    ),
    BadInput(
        "unpriced_model",
        text(event("unpriced", model="no-such-model-anywhere")),
        Letter("price", "unpriced", "no price for model 'no-such-model-anywhere'"),
        None,  # a valid event: pricing is the worker's job, never charged $0
    ),
    # -- unicode ------------------------------------------------------------------------------
    BadInput(
        "lone_surrogate_escape",
        text(event("surrogate")).replace(b'"bad-surrogate"', b'"bad-\\ud800"'),
        Letter("decode", "malformed_json", "surrogate"),
        Refusal(400, "malformed_json", "surrogate"),
    ),
    BadInput(
        "invalid_utf8_byte",
        text(event("utf8")).replace(b"bad-utf8", b"bad-\xff"),
        Letter("decode", "malformed_json", "UTF-8"),
        Refusal(400, "malformed_json", "UTF-8"),
    ),
    BadInput(
        "overlong_utf8_slash",
        text(event("overlong")).replace(b"bad-overlong", b"bad-\xc0\xafoverlong"),
        Letter("decode", "malformed_json", "UTF-8"),
        Refusal(400, "malformed_json", "UTF-8"),
    ),
    BadInput(
        "nul_escape_in_event_id",
        text(event("nul")).replace(b'"bad-nul"', b'"bad-\\u0000nul"'),
        invalid("event_id: String should match pattern"),
        field_error(("event_id",), "should match pattern"),
    ),
    BadInput(
        "raw_control_byte_in_string",
        text(event("ctl")).replace(b'"bad-ctl"', b'"bad-\x01ctl"'),
        MALFORMED,
        NOT_JSON,
    ),
    BadInput(
        "control_character_in_user_id",
        text(event("bell", user_id="ali\u0007ce")),
        invalid("user_id: Value error, scope id contains a control character"),
        field_error(("user_id",), "control character"),
    ),
    BadInput(
        "white_space_around_team_id",
        text(event("padded", team_id=" research ")),
        invalid("team_id: Value error, scope id has leading or trailing white space"),
        field_error(("team_id",), "leading or trailing white space"),
    ),
    # -- duplicate keys --------------------------------------------------------------------------
    BadInput(
        "duplicate_top_level_key",
        text(event("dup-usage")).replace(
            b'"usage":{', b'"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{', 1
        ),
        Letter("decode", "duplicate_key", "key 'usage' appears more than once"),
        Refusal(422, "invalid_usage", "appears more than once", ("usage",)),
    ),
    BadInput(
        "duplicate_token_count_key",
        text(tokens("dup-tokens")).replace(b'"prompt_tokens":100', b'"prompt_tokens":100,"prompt_tokens":100000'),
        Letter("decode", "duplicate_key", "key 'usage.prompt_tokens' appears more than once"),
        Refusal(422, "invalid_usage", "appears more than once", ("usage", "prompt_tokens")),
    ),
    BadInput(
        "duplicate_event_id_key",
        text(event("dup-id")).replace(b'"event_id":"bad-dup-id"', b'"event_id":"bad-dup-id","event_id":"bad-dup-id2"'),
        Letter("decode", "duplicate_key", "key 'event_id' appears more than once"),
        Refusal(422, "invalid_usage", "appears more than once", ("event_id",)),
    ),
    BadInput(
        # One repeated key anywhere refuses the whole message: its good event is not charged.
        "duplicate_key_inside_a_batch",
        _DUPLICATE_IN_BATCH,
        Letter("decode", "duplicate_key", "key 'events.1.model' appears more than once"),
        Refusal(422, "invalid_usage", "appears more than once", ("events", 1, "model")),
    ),
    # -- batches ----------------------------------------------------------------------------------
    BadInput(
        "batch_with_one_bad_event_among_good",
        text(batch("bad-batch-mixed", [good_event("good-batch-0"), _BAD_IN_BATCH, good_event("good-batch-2")])),
        # The worker validates each event of a batch on its own (hop 2): the letter names
        # the event (its id and bytes) and the message's offset, not the batch position.
        Letter("validate", "invalid_usage", "usage.prompt_tokens: Input should be greater than or equal to 0"),
        Refusal(422, "invalid_usage", "1 of 3 events are invalid; nothing was published", ("events", 1, "usage")),
        good_events=(good_event("good-batch-0"), good_event("good-batch-2")),
        letter_original=text(_BAD_IN_BATCH),
    ),
    BadInput(
        "batch_with_an_event_that_is_not_an_object",
        text(batch("bad-batch-item", [good_event("good-batch-item-0"), _NOT_AN_OBJECT_IN_BATCH])),
        Letter("decode", "not_an_object", "events[1] is not an object but a number"),
        Refusal(422, "invalid_usage", "an event must be a JSON object", ("events", 1)),
        good_events=(good_event("good-batch-item-0"),),
        letter_original=text(_NOT_AN_OBJECT_IN_BATCH),
    ),
    BadInput(
        "empty_batch",
        text(batch("bad-batch-empty", [])),
        Letter("validate", "invalid_batch", f"events must be a list of 1 to {BATCH_EVENTS_MAX} events"),
        Refusal(422, "invalid_usage", "the batch holds no events"),
    ),
    BadInput(
        "batch_one_event_over_limit",
        text(batch("bad-batch-big", [event(f"big-{i}") for i in range(BATCH_EVENTS_MAX + 1)])),
        Letter("validate", "invalid_batch", f"events must be a list of 1 to {BATCH_EVENTS_MAX} events"),
        Refusal(422, "invalid_usage", f"a batch holds at most {BATCH_EVENTS_MAX} events, got {BATCH_EVENTS_MAX + 1}"),
    ),
    BadInput(
        "batch_events_not_a_list",
        text(batch("bad-batch-shape", {"0": event("shape")})),
        Letter("validate", "invalid_batch", "events must be a list"),
        Refusal(422, "invalid_usage", "events must be a list"),
    ),
    BadInput(
        "batch_id_not_a_string",
        text({"batch_id": 7, "events": [event("batch-id-number")]}),
        Letter("validate", "invalid_batch", "batch_id (a non-empty string)"),
        Refusal(422, "invalid_usage", "batch_id must be a string", ("batch_id",)),
    ),
    BadInput(
        "batch_schema_version_2",
        text(batch("bad-batch-v2", [event("batch-v2")], schema_version=2)),
        Letter("decode", "unsupported_schema_version", "schema_version 2 is not supported"),
        Refusal(422, "invalid_usage", "schema_version 2 is not supported", ("schema_version",)),
    ),
    BadInput(
        "batch_with_unknown_envelope_field",
        text(batch("bad-batch-extra", [event("batch-extra")], source="gateway")),
        Letter("validate", "invalid_batch", "unexpected fields: ['source']"),
        Refusal(422, "invalid_usage", "unexpected fields: ['source']"),
    ),
    # -- HTTP only: there is no content type on Kafka, where the same bytes are an event ----
    BadInput(
        "content_type_text_plain",
        text(event("text-plain")),
        None,
        Refusal(415, "unsupported_media", "send JSON (Content-Type: application/json)"),
        content_type="text/plain",
    ),
    BadInput(
        "content_type_form",
        b"event_id=bad-form&model=gpt-4o-mini",
        None,
        Refusal(415, "unsupported_media", "not 'application/x-www-form-urlencoded'"),
        content_type="application/x-www-form-urlencoded",
    ),
]

BY_NAME = {kind.name: kind for kind in CORPUS}
assert len(BY_NAME) == len(CORPUS), "kind names are unique"
KAFKA_KINDS = [kind for kind in CORPUS if kind.letter is not None]
HTTP_KINDS = [kind for kind in CORPUS if kind.refusal is not None]


def assert_refused_as(refusal: Refusal, status: int, error: dict[str, Any]) -> None:
    """``error`` (the ``error`` object of an answer) is the refusal the corpus expects."""
    assert status == refusal.status, error
    assert error["type"] == refusal.type, error
    fields = error.get("fields") or []
    assert any(refusal.text in found for found in [error["message"], *(field["msg"] for field in fields)]), error
    if refusal.loc is not None:
        wanted = refusal.loc
        locations = [tuple(field["loc"]) for field in fields]
        # The location itself, or one inside it (a union's member); () is the record itself.
        assert any(loc == wanted or (wanted and loc[: len(wanted)] == wanted) for loc in locations), (wanted, error)


def over_api_limit_request(path: str, authorization: str | None) -> bytes:
    """The head of a request declaring a body one byte over ``BODY_BYTES_MAX``: the api
    must refuse it from the declared length, before reading (or holding) any of it."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {BODY_BYTES_MAX + 1}",
        "Connection: close",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@cache
def genai_prices_book_cached() -> PriceBook:
    return genai_prices_book()


def worker_decode(
    value: bytes,
    book: PriceBook,
    *,
    count_tokens: Callable[[str], int] | None = None,
    trust_reported_cost: bool = False,
    received_at: datetime | None = None,
) -> tuple[list[UsageEvent], list[Rejected]]:
    """What the worker does with one ``usage`` message (streams/app.py), in process: hop 1
    splits it, hop 2 validates each event from the bytes hop 1 routed, then prices it.
    Returns the events it charges and what it dead-letters (adjustments are left out)."""
    raw_events, rejected = split_usage_message(value)
    charged: list[UsageEvent] = []
    for raw_event in raw_events:
        body = raw_event.original if raw_event.original is not None else orjson.dumps(raw_event.raw)
        checked = validate_input(orjson.loads(body), original=body, received_at=received_at)
        if isinstance(checked, Rejected):
            rejected.append(checked)
            continue
        if isinstance(checked, LedgerAdjustment):
            continue
        try:
            price_event(checked, book, count_tokens=count_tokens, trust_reported_cost=trust_reported_cost)
        except UnpricedModel as exc:
            rejected.append(Rejected(body, "price", "unpriced", str(exc), checked.event_id))
            continue
        except InvalidUsage as exc:
            rejected.append(Rejected(body, "price", "invalid_usage", str(exc), checked.event_id))
            continue
        charged.append(checked)
    return charged, rejected
