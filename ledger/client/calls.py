"""The api's requests, built and decoded once for the sync and the async client.

A ``Call`` is one request (method, path, query, JSON body) and how to decode its answer;
error answers become ``LedgerApiError`` from their ``{"error": {...}}`` body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import ValidationError

from ledger.client.answers import (
    AlertRecord,
    Answer,
    BudgetWrite,
    CheckAnswer,
    LedgerApiError,
    LedgerConnectionError,
    ModelLimit,
    Money,
    SpendReport,
)
from ledger.domain.events import BATCH_EVENTS_MAX, UsageEvent
from ledger.domain.money import MoneyError, format_usd, usd_to_nanos

if TYPE_CHECKING:
    from ledger.settings import Settings

UsageRecord = Mapping[str, Any] | UsageEvent
T = TypeVar("T")
A = TypeVar("A", bound=Answer)

PUBLISH_EVENTS_MAX = BATCH_EVENTS_MAX  # the api takes at most this many events per request
PUBLISH_BYTES_MAX = 4 * 1024 * 1024  # per request; the api refuses bodies over 32 MiB
ERROR_TEXT_CHARS_MAX = 500  # of a non-JSON error answer (a proxy's HTML page)
USER_AGENT = "spend-ledger-client/0.1.0"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request of the api, and how its answer is decoded (or raised as an error)."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


def usd_text(amount: Money, name: str = "amount") -> str:
    """Exact decimal text of a USD amount (a ``Decimal``, ``str`` or ``int``); a float or
    an amount finer than one nano-USD is refused, so what is sent is what was meant."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | str | int):
        raise TypeError(f"{name} must be a Decimal, str or int of USD, not {type(amount).__name__}")
    try:
        return format_usd(usd_to_nanos(amount, exact=True))
    except MoneyError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _segment(text: str) -> str:
    return quote(text, safe="")


def budget_path(kind: str, scope_id: str) -> str:
    return f"/v1/budgets/{_segment(kind)}/{_segment(scope_id)}"


def json_body(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decoded(response: httpx.Response, model: type[A]) -> A:
    _raise_for_error(response)
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise LedgerApiError(response.status_code, "unexpected_answer", f"unexpected answer: {exc}") from exc


def decoder(model: type[A]) -> Callable[[httpx.Response], A]:
    return lambda response: _decoded(response, model)


def list_decoder(model: type[A], key: str | None = None) -> Callable[[httpx.Response], list[A]]:
    def decode(response: httpx.Response) -> list[A]:
        _raise_for_error(response)
        try:
            found = response.json()
            items = found[key] if key is not None else found
            return [model.model_validate(item) for item in items]
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise LedgerApiError(response.status_code, "unexpected_answer", f"unexpected answer: {exc}") from exc

    return decode


def _raise_for_error(response: httpx.Response) -> None:
    """Raise ``LedgerApiError`` for an error answer, from its ``{"error": {...}}`` body."""
    if response.is_success:
        return
    status = response.status_code
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        text = response.text.strip()[:ERROR_TEXT_CHARS_MAX] or response.reason_phrase
        raise LedgerApiError(status, "http_error", f"HTTP {status} from {response.request.url}: {text}")
    fields = error.get("fields")
    raise LedgerApiError(
        status,
        str(error.get("type") or "http_error"),
        str(error.get("message") or f"HTTP {status}"),
        fields if isinstance(fields, list) else None,
        error,
    )


def _decode_check(model: str | None) -> Callable[[httpx.Response], CheckAnswer]:
    def decode(response: httpx.Response) -> CheckAnswer:
        if response.status_code == 402:
            try:
                error = response.json()["error"]
                if error.get("type") == "budget_exceeded":
                    return CheckAnswer.model_validate(
                        {
                            "allowed": False,
                            "model": model,
                            "message": error.get("message"),
                            "scope": error.get("scope"),
                            "scopes": error.get("scopes") or [],
                        }
                    )
            except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
                pass
        return _decoded(response, CheckAnswer)

    return decode


def set_budget_call(
    kind: str,
    scope_id: str,
    *,
    max_budget: Money | None,
    soft_budget: Money | None,
    budget_duration: str | None,
    model_max_budget: Mapping[str, Money | ModelLimit] | None,
    alias: str | None,
    timezone: str | None,
) -> Call[BudgetWrite]:
    body: dict[str, Any] = {}
    if max_budget is not None:
        body["max_budget"] = usd_text(max_budget, "max_budget")
    if soft_budget is not None:
        body["soft_budget"] = usd_text(soft_budget, "soft_budget")
    if budget_duration is not None:
        body["budget_duration"] = budget_duration
    if model_max_budget:
        models: dict[str, Any] = {}
        for model, limit in model_max_budget.items():
            if isinstance(limit, ModelLimit):
                amount = usd_text(limit.max_budget, f"model_max_budget[{model}]")
                models[model] = {"budget_limit": amount, "time_period": limit.duration}
            else:
                models[model] = usd_text(limit, f"model_max_budget[{model}]")
        body["model_max_budget"] = models
    if alias is not None:
        body["alias"] = alias
    if timezone is not None:
        body["timezone"] = timezone
    return Call("PUT", budget_path(kind, scope_id), decoder(BudgetWrite), body=json_body(body))


def check_call(
    *,
    user: str | None,
    team: str | None,
    key: str | None,
    end_user: str | None,
    tags: Sequence[str],
    model: str | None,
) -> Call[CheckAnswer]:
    params = [(name, value) for name, value in (("user", user), ("team", team), ("key", key)) if value is not None]
    if end_user is not None:
        params.append(("end_user", end_user))
    params.extend(("tag", tag) for tag in tags)
    if model is not None:
        params.append(("model", model))
    return Call("GET", "/v1/check", _decode_check(model), params=tuple(params))


def spend_call(
    group_by: Sequence[str], start: datetime | None, end: datetime | None, scope: str | None, limit: int
) -> Call[SpendReport]:
    params = [("group_by", name) for name in group_by]
    params.extend((name, value.isoformat()) for name, value in (("from", start), ("to", end)) if value is not None)
    if scope is not None:
        params.append(("scope", scope))
    params.append(("limit", str(limit)))
    return Call("GET", "/v1/spend", decoder(SpendReport), params=tuple(params))


def alerts_call(scope: str | None, kind: str | None, since: datetime | None, limit: int) -> Call[list[AlertRecord]]:
    params = [(name, value) for name, value in (("scope", scope), ("kind", kind)) if value is not None]
    if since is not None:
        params.append(("since", since.isoformat()))
    params.append(("limit", str(limit)))
    return Call("GET", "/v1/alerts", list_decoder(AlertRecord, "alerts"), params=tuple(params))


def _event_json(event: UsageRecord) -> bytes:
    if isinstance(event, UsageEvent):
        return event.model_dump_json(exclude_defaults=True).encode()
    return json_body(dict(event))


def usage_bodies(
    events: Iterable[UsageRecord],
    events_max: int = PUBLISH_EVENTS_MAX,
    bytes_max: int = PUBLISH_BYTES_MAX,
) -> Iterator[tuple[bytes, int]]:
    """``POST /v1/usage`` bodies carrying ``events`` in order: ``({"events": [...]}, count)``,
    each of at most ``events_max`` events and, unless one event alone is larger, about
    ``bytes_max`` bytes."""
    if not 1 <= events_max <= PUBLISH_EVENTS_MAX:
        raise ValueError(f"events_max must be within 1..{PUBLISH_EVENTS_MAX}")
    parts: list[bytes] = []
    size = 0
    for event in events:
        encoded = _event_json(event)
        if parts and (len(parts) == events_max or size + len(encoded) + 1 > bytes_max):
            yield b'{"events":[' + b",".join(parts) + b"]}", len(parts)
            parts, size = [], 0
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        yield b'{"events":[' + b",".join(parts) + b"]}", len(parts)


def publish_call(body: bytes) -> Call[list[str]]:
    def decode(response: httpx.Response) -> list[str]:
        _raise_for_error(response)
        try:
            ids = response.json()["event_ids"]
            return [str(event_id) for event_id in ids]
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerApiError(response.status_code, "unexpected_answer", f"unexpected answer: {exc}") from exc

    return Call("POST", "/v1/usage", decode, body=body)


def headers_for(key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def key_of(settings: Settings) -> str | None:
    """The master key, else the ingest key (enough for ``publish`` and ``check``)."""
    for secret in (settings.master_key, settings.ingest_key):
        if secret is not None:
            return secret.get_secret_value()
    return None


def connection_error(base_url: str, exc: httpx.TransportError, timeout_s: float) -> LedgerConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return LedgerConnectionError(base_url, f"no answer within {timeout_s:g} s ({type(exc).__name__})")
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in reason.lower():
        reason = "connection refused (is the api running?)"
    return LedgerConnectionError(base_url, reason)
