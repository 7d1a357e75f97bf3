"""Admission requests of the api (``/v1/admit``, model limits, the priority reservation)
and their typed answers, for the sync and the async client alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from pydantic import Field, ValidationError

from ledger.client.answers import Answer, LedgerApiError, Money
from ledger.client.calls import Call, _decoded, _raise_for_error, _segment, budget_path, decoder, json_body, usd_text


class ScopeRoomInfo(Answer):
    """One scope of an admit: spend in its tightest limit, what holds reserve, what is left."""

    scope_key: str
    spend_nanos: int = 0
    held_nanos: int = 0
    max_budget_nanos: int | None = None
    remaining_budget_nanos: int | None = None


class RateShareInfo(Answer):
    """The key's share of a model's TPM or RPM this minute, after the admit."""

    limit: int
    remaining: int
    model_remaining: int
    active_keys: int


class HoldInfo(Answer):
    """A hold: the estimate reserved on every scope until settled, released or expired."""

    request_id: str
    state: str
    model: str
    model_group: str | None = None
    rate_key: str | None = None
    priority: str | None = None
    scope_keys: list[str] = Field(default_factory=list)
    estimate_cost_nanos: int = 0
    estimated_tokens: int = 0
    held_at: datetime
    expires_at: datetime


class Admitted(HoldInfo):
    """``POST /v1/admit`` answered 200: the hold, each scope's room and the rate shares."""

    repeated: bool = False
    scopes: list[ScopeRoomInfo] = Field(default_factory=list)
    tpm: RateShareInfo | None = None
    rpm: RateShareInfo | None = None
    rate_limit_headers: dict[str, str] = Field(default_factory=dict)


class AdmissionRefused(LedgerApiError):
    """An admit the ledger refused: ``BudgetRefused`` (402) or ``RateLimited`` (429)."""


class BudgetRefused(AdmissionRefused):
    """402: a scope's ``spent + held + estimate`` would pass its max budget. The message
    reads like LiteLLM's (``Budget has been exceeded! Current cost: X, Max budget: Y``)."""

    def __init__(self, message: str, scope: str | None, scopes: list[ScopeRoomInfo], detail: Mapping[str, Any]) -> None:
        super().__init__(402, "budget_exceeded", message, None, detail)
        self.scope = scope
        self.scopes = scopes


class RateLimited(AdmissionRefused):
    """429: the key's share of the model's TPM or RPM is used up this minute
    (``Key=<key> over available TPM=0. Model TPM=<left>, Active keys=<n>``)."""

    def __init__(self, message: str, retry_after_s: int, headers: Mapping[str, str], detail: Mapping[str, Any]) -> None:
        super().__init__(429, "rate_limited", message, None, detail)
        self.retry_after_s = retry_after_s
        self.headers = dict(headers)


class ModelLimitsInfo(Answer):
    model: str
    tpm: int | None = None
    rpm: int | None = None
    models: list[str] | None = None
    applied: bool = True


class RateLimitsInfo(Answer):
    models: list[ModelLimitsInfo] = Field(default_factory=list)
    priority_reservation: dict[str, float] = Field(default_factory=dict)
    saturation: float = 0.8
    key_priorities: dict[str, str] = Field(default_factory=dict)


def _decode_admit(response: httpx.Response) -> Admitted:
    if response.status_code in (402, 429):
        try:
            error = response.json()["error"]
            message = str(error["message"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerApiError(response.status_code, "unexpected_answer", f"unexpected answer: {exc}") from exc
        if response.status_code == 402:
            try:
                scopes = [ScopeRoomInfo.model_validate(scope) for scope in error.get("scopes") or []]
            except ValidationError:
                scopes = []
            raise BudgetRefused(message, error.get("scope"), scopes, error)
        retry = response.headers.get("retry-after", "60")
        headers = {name: value for name, value in response.headers.items() if name.startswith("x-ratelimit-")}
        raise RateLimited(message, int(retry) if retry.isdecimal() else 60, headers, error)
    admitted = _decoded(response, Admitted)
    headers = {name: value for name, value in response.headers.items() if name.startswith("x-ratelimit-")}
    return admitted.model_copy(update={"rate_limit_headers": headers})


def admit_call(
    request_id: str,
    model: str | None,
    *,
    model_group: str | None = None,
    models: Sequence[str] | None = None,
    user: str | None = None,
    team: str | None = None,
    key: str | None = None,
    end_user: str | None = None,
    tags: Sequence[str] = (),
    priority: str | None = None,
    prompt_tokens: int | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    cost: Money | None = None,
) -> Call[Admitted]:
    """``POST /v1/admit``; a refusal raises ``BudgetRefused`` or ``RateLimited``. ``model``
    may be None when ``model_group`` names the call's group."""
    body: dict[str, Any] = {"request_id": request_id}
    if models is not None:
        body["models"] = list(models)
    for name, value in (
        ("model", model),
        ("model_group", model_group),
        ("user", user),
        ("team", team),
        ("key", key),
        ("end_user", end_user),
        ("priority", priority),
        ("prompt_tokens", prompt_tokens),
        ("max_tokens", max_tokens),
    ):
        if value is not None:
            body[name] = value
    if tags:
        body["tags"] = list(tags)
    if messages is not None:
        body["messages"] = [dict(message) for message in messages]
    if cost is not None:
        body["cost"] = usd_text(cost, "cost")
    return Call("POST", "/v1/admit", _decode_admit, body=json_body(body))


def release_call(request_id: str) -> Call[HoldInfo]:
    """``DELETE /v1/admit/{id}``: 404 when no hold is open, 409 when it already ended."""
    return Call("DELETE", f"/v1/admit/{_segment(request_id)}", decoder(HoldInfo))


def admissions_call(scope: str | None = None, limit: int = 1_000) -> Call[list[HoldInfo]]:
    params: list[tuple[str, str]] = [("state", "open"), ("limit", str(limit))]
    if scope is not None:
        params.append(("scope", scope))

    def decode(response: httpx.Response) -> list[HoldInfo]:
        _raise_for_error(response)
        try:
            return [HoldInfo.model_validate(hold) for hold in response.json()["holds"]]
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise LedgerApiError(response.status_code, "unexpected_answer", f"unexpected answer: {exc}") from exc

    return Call("GET", "/v1/admissions", decode, params=tuple(params))


def set_model_limits_call(
    model: str, *, tpm: int | None = None, rpm: int | None = None, models: Sequence[str] | None = None
) -> Call[ModelLimitsInfo]:
    body: dict[str, Any] = {name: value for name, value in (("tpm", tpm), ("rpm", rpm)) if value is not None}
    if models is not None:
        body["models"] = list(models)
    return Call("PUT", f"/v1/models/{_segment(model)}/limits", decoder(ModelLimitsInfo), body=json_body(body))


def delete_model_limits_call(model: str) -> Call[ModelLimitsInfo]:
    return Call("DELETE", f"/v1/models/{_segment(model)}/limits", decoder(ModelLimitsInfo))


def rate_limits_call() -> Call[RateLimitsInfo]:
    return Call("GET", "/v1/models/limits", decoder(RateLimitsInfo))


def priority_reservation_call(reservation: Mapping[str, Decimal | float | str] | None) -> Call[dict[str, Any]]:
    """``PUT /v1/priority_reservation`` (None: back to the setting)."""
    body = {"priority_reservation": None if reservation is None else {k: str(v) for k, v in reservation.items()}}

    def decode(response: httpx.Response) -> dict[str, Any]:
        _raise_for_error(response)
        found: dict[str, Any] = response.json()
        return found

    return Call("PUT", "/v1/priority_reservation", decode, body=json_body(body))


def key_priority_call(key_id: str, priority: str) -> Call[dict[str, Any]]:
    """``PUT /v1/budgets/key/{id}`` with ``priority`` only: the key's budgets stay."""

    def decode(response: httpx.Response) -> dict[str, Any]:
        _raise_for_error(response)
        found: dict[str, Any] = response.json()
        return found

    return Call("PUT", budget_path("key", key_id), decode, body=json_body({"priority": priority}))
