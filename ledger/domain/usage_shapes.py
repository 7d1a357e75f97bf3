"""The usage shapes people already have, mapped onto ``UsageEvent``.

- OpenAI: Chat Completions ``usage`` (``prompt_tokens``, ``completion_tokens``,
  ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``),
  the Responses API ``usage`` (``input_tokens``, ``output_tokens``,
  ``input_tokens_details.cached_tokens``, ``output_tokens_details.reasoning_tokens``), and
  LiteLLM's ``Usage`` (which adds ``cache_creation_input_tokens`` and
  ``cache_read_input_tokens``; its ``prompt_tokens`` already includes cached tokens).
- LiteLLM: the standard logging payload a ``CustomLogger`` receives as
  ``kwargs["standard_logging_object"]``.

Errors say which field was wrong (``usage.prompt_tokens``); a ``UsageEvent`` that cannot
be built raises pydantic's ``ValidationError`` with field locations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ledger.domain.errors import InvalidUsage
from ledger.domain.events import METADATA_VALUE_CHARS_MAX, TokenUsage, UsageEvent

_LITELLM_METADATA_FIELDS = ("call_type", "model_group", "api_base", "trace_id")
_LITELLM_KEY_METADATA_FIELDS = ("user_api_key_alias", "user_api_key_team_alias")


def as_mapping(value: Any, field: str) -> Mapping[str, Any]:
    """A dict view of a mapping, a pydantic model (OpenAI/LiteLLM SDK objects) or an object."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    if hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    raise InvalidUsage(f"expected an object, got {type(value).__name__}", field=field)


def _count(source: Mapping[str, Any] | None, key: str, field: str) -> int:
    """A token count: None or absent is 0; an integral float (12.0, from some SDKs'
    JSON) is accepted as 12; booleans, fractions, negatives and strings are errors."""
    if source is None:
        return 0
    value = source.get(key)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise InvalidUsage("a token count cannot be a boolean", field=field)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidUsage(f"a token count must be a whole number, got {value}", field=field)
        value = int(value)
    if not isinstance(value, int):
        raise InvalidUsage(f"a token count must be an integer, got {type(value).__name__}", field=field)
    if value < 0:
        raise InvalidUsage(f"a token count cannot be negative, got {value}", field=field)
    return value


def _details(usage: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any] | None:
    value = usage.get(key)
    return None if value is None else as_mapping(value, f"{field}.{key}")


def usage_from_openai(usage: Mapping[str, Any] | Any, *, field: str = "usage") -> TokenUsage:
    """Token usage from an OpenAI (Chat Completions or Responses) or LiteLLM usage object.

    prompt <- ``prompt_tokens`` or ``input_tokens``; completion <- ``completion_tokens`` or
    ``output_tokens``; cache read <- ``*_tokens_details.cached_tokens`` or LiteLLM's
    ``cache_read_input_tokens``; cache write <- ``cache_creation_input_tokens``;
    reasoning <- ``*_tokens_details.reasoning_tokens``. Audio and prediction counts stay
    inside the totals and are billed at the text rate.
    """
    data = as_mapping(usage, field)
    responses_api = "input_tokens" in data and "prompt_tokens" not in data
    prompt_key, completion_key = (
        ("input_tokens", "output_tokens") if responses_api else ("prompt_tokens", "completion_tokens")
    )
    prompt_details_key = "input_tokens_details" if responses_api else "prompt_tokens_details"
    completion_details_key = "output_tokens_details" if responses_api else "completion_tokens_details"
    prompt_details = _details(data, prompt_details_key, field)
    completion_details = _details(data, completion_details_key, field)

    cache_read = _count(prompt_details, "cached_tokens", f"{field}.{prompt_details_key}.cached_tokens")
    if cache_read == 0:
        cache_read = _count(data, "cache_read_input_tokens", f"{field}.cache_read_input_tokens")
    fields = {
        "prompt_tokens": _count(data, prompt_key, f"{field}.{prompt_key}"),
        "completion_tokens": _count(data, completion_key, f"{field}.{completion_key}"),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": _count(data, "cache_creation_input_tokens", f"{field}.cache_creation_input_tokens"),
        "reasoning_tokens": _count(
            completion_details, "reasoning_tokens", f"{field}.{completion_details_key}.reasoning_tokens"
        ),
    }
    try:
        return TokenUsage(**fields)
    except ValueError as exc:
        raise InvalidUsage(str(exc).splitlines()[-1].strip(), field=field) from exc


def event_from_openai(
    response_or_usage: Mapping[str, Any] | Any,
    *,
    event_id: str,
    occurred_at: datetime,
    model: str | None = None,
    provider: str | None = "openai",
    user_id: str | None = None,
    team_id: str | None = None,
    key_id: str | None = None,
    end_user: str | None = None,
    tags: Sequence[str] = (),
    metadata: Mapping[str, str | int | bool | None] | None = None,
) -> UsageEvent:
    """A usage event from a whole OpenAI response (its ``model`` and ``usage``) or from a
    bare usage object (then ``model`` is required).

    ``event_id`` is explicit, never taken from the response: idempotency needs an id the
    caller chose and will send again on a retry.
    """
    data = as_mapping(response_or_usage, "response")
    usage_source: Any = data.get("usage", data) if "usage" in data else data
    chosen_model = model or data.get("model")
    if not isinstance(chosen_model, str) or not chosen_model:
        raise InvalidUsage("no model given and none in the response", field="model")
    return UsageEvent(
        event_id=event_id,
        occurred_at=occurred_at,
        model=chosen_model,
        provider=provider,
        user_id=user_id,
        team_id=team_id,
        key_id=key_id,
        end_user=end_user,
        tags=tuple(tags),
        usage=usage_from_openai(usage_source),
        metadata=dict(metadata or {}),
    )


def _text(value: Any) -> str | None:
    """A non-empty string, or None (LiteLLM sends "" and None alike for "absent")."""
    return value if isinstance(value, str) and value else None


def _reported_cost(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidUsage(f"expected a number, got {type(value).__name__}", field="response_cost")
    # The float is converted through its shortest repr: 0.000123 becomes Decimal("0.000123").
    try:
        cost = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise InvalidUsage(f"not a number: {value!r}", field="response_cost") from exc
    if not cost.is_finite() or cost < 0:
        raise InvalidUsage(f"must be a finite, non-negative amount, got {value}", field="response_cost")
    return cost


def event_from_litellm_payload(payload: Mapping[str, Any]) -> UsageEvent:
    """A usage event from LiteLLM's ``StandardLoggingPayload``.

    event_id <- ``id``; occurred_at <- ``startTime`` (epoch seconds); model <- ``model``
    (else ``model_group``); model_group <- ``model_group``; provider <- ``custom_llm_provider``; user, team, key <-
    ``metadata.user_api_key_user_id``, ``.user_api_key_team_id``, ``.user_api_key_hash``;
    end user <- ``end_user`` (else ``metadata.user_api_key_end_user_id``); tags <-
    ``request_tags``; usage <- ``metadata.usage_object`` or ``response.usage`` when
    present (for cache and reasoning counts), else ``prompt_tokens``/``completion_tokens``;
    reported_cost <- ``response_cost``. Only successful calls are charged.
    """
    if payload.get("status") == "failure":
        raise InvalidUsage("a failed call is not charged", field="status")
    event_id = _text(payload.get("id"))
    if event_id is None:
        raise InvalidUsage("the payload has no id", field="id")
    start = payload.get("startTime")
    if isinstance(start, bool) or not isinstance(start, int | float) or not math.isfinite(start):
        raise InvalidUsage("startTime must be epoch seconds", field="startTime")
    meta = as_mapping(payload.get("metadata") or {}, "metadata")

    usage_source: Any = meta.get("usage_object")
    response = payload.get("response")
    if usage_source is None and isinstance(response, Mapping):
        usage_source = response.get("usage")
    if usage_source is None:
        usage_source = {
            "prompt_tokens": payload.get("prompt_tokens"),
            "completion_tokens": payload.get("completion_tokens"),
        }

    extra = {key: payload.get(key) for key in _LITELLM_METADATA_FIELDS}
    extra.update({key: meta.get(key) for key in _LITELLM_KEY_METADATA_FIELDS})
    metadata = {
        key: value[:METADATA_VALUE_CHARS_MAX] for key, value in extra.items() if isinstance(value, str) and value
    }
    raw_tags = payload.get("request_tags") or []
    tags = tuple(dict.fromkeys(tag for tag in raw_tags if isinstance(tag, str) and tag))

    return UsageEvent(
        event_id=event_id,
        occurred_at=datetime.fromtimestamp(start, tz=UTC),
        model=_text(payload.get("model")) or _text(payload.get("model_group")) or "",
        provider=_text(payload.get("custom_llm_provider")),
        model_group=_text(payload.get("model_group")),
        user_id=_text(meta.get("user_api_key_user_id")),
        team_id=_text(meta.get("user_api_key_team_id")),
        key_id=_text(meta.get("user_api_key_hash")),
        end_user=_text(payload.get("end_user")) or _text(meta.get("user_api_key_end_user_id")),
        tags=tags,
        usage=usage_from_openai(usage_source),
        reported_cost=_reported_cost(payload.get("response_cost")),
        metadata=metadata,
    )
