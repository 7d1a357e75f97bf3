"""Admission routes (DESIGN section 10): ``POST /v1/admit`` holds a call's estimated cost
and its share of the model's TPM/RPM, ``DELETE /v1/admit/{id}`` releases it; model
capacities and the priority reservation are event-sourced on ``rate-limits``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from fractions import Fraction
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag, ValidationError, model_validator

from ledger.api.auth import authorize
from ledger.api.deps import ADMIN, CLIENT, ApiError, Services, now
from ledger.api.schemas import REQUEST, ErrorView, UsdAmount, usd
from ledger.api.services import ApiServices
from ledger.domain.admission import Admission, AdmitRequest, Estimate, Hold, RequestIdUsed, ScopeRoom
from ledger.domain.checks import TAGS_PER_CHECK_MAX, call_scopes
from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import TOKENS_PER_FIELD_MAX, EventId, Identifier, ModelName, TokenCount, TokenUsage
from ledger.domain.model_groups import DEPLOYMENT_MODELS_MAX, CallModels, call_models, dearest_estimate
from ledger.domain.money import MoneyError, usd_to_nanos
from ledger.domain.rate_shares import CAPACITY_MAX, PriorityName, RateBook, RateLimitRecord, Reservation, rate_key
from ledger.domain.scopes import InvalidScope
from ledger.tokenizer import count_tokens

router = APIRouter(tags=["admission"])
MESSAGES_MAX = 10_000
TOKENS_PER_MESSAGE = 4  # OpenAI's chat framing per message, and the reply's priming
HOLDS_LISTED_MAX = 10_000
APPLY_POLL_S = 0.01
TEXT_INLINE_CHARS_MAX = 65_536  # longer messages are tokenized off the event loop
MODEL_MISSING = "Field required: give model, model_group or both"


class ChatMessage(BaseModel):
    """One message of the call (only its text is read, to count prompt tokens)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: str = Field(default="user", max_length=64)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "\n".join(str(part.get("text", "")) for part in self.content if isinstance(part, dict))


class AdmitBody(BaseModel):
    """``POST /v1/admit``: the call, its scopes, and an estimate: ``prompt_tokens`` or
    ``messages`` plus ``max_tokens`` (default: the ``admission_default_max_tokens``
    setting), or a ``cost`` in USD. The model: ``model``, a ``model_group`` (a LiteLLM
    proxy ``model_name``, whose TPM/RPM shares the call uses), or both."""

    model_config = REQUEST

    request_id: EventId = Field(description="the id the call's usage event will carry")
    model: ModelName | None = Field(
        default=None, description="the model the call is priced as; alone, a group whose models are recorded"
    )
    model_group: ModelName | None = Field(
        default=None, description="the LiteLLM model_name whose TPM/RPM shares the call uses (default: model)"
    )
    models: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=DEPLOYMENT_MODELS_MAX,
        description="the models the group's deployments are priced as; the dearest is estimated",
    )
    user: Identifier | None = None
    team: Identifier | None = None
    key: Identifier | None = None
    end_user: Identifier | None = None
    tags: list[Identifier] = Field(default_factory=list, max_length=TAGS_PER_CHECK_MAX)
    priority: PriorityName | None = None
    prompt_tokens: TokenCount | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MESSAGES_MAX)
    max_tokens: TokenCount | None = None
    cost: UsdAmount | None = Field(
        default=None, description="the call's estimated cost in USD, instead of pricing tokens"
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> AdmitBody:
        if self.prompt_tokens is not None and self.messages is not None:
            raise ValueError("give prompt_tokens or messages, not both")
        if self.model is not None and self.models is not None:
            raise ValueError("give model or models, not both")
        return self


class ScopeRoomView(BaseModel):
    scope_key: str
    spend_nanos: int
    held_nanos: int
    max_budget: float | None
    max_budget_nanos: int | None
    remaining_budget: float | None
    remaining_budget_nanos: int | None


class RateView(BaseModel):
    limit: int
    remaining: int
    model_remaining: int
    active_keys: int


class AdmitView(BaseModel):
    """A hold: the estimate is reserved on every scope until the call's usage event
    settles it, ``DELETE /v1/admit/{id}`` releases it, or it expires."""

    request_id: str
    admitted: bool = True
    state: str
    model: str
    model_group: str | None
    rate_key: str
    priority: str | None
    estimate_cost: float
    estimate_cost_nanos: int
    estimated_tokens: int
    held_at: datetime
    expires_at: datetime
    repeated: bool = Field(description="true: this request id's hold was already open, answered again")
    scopes: list[ScopeRoomView]
    tpm: RateView | None = None
    rpm: RateView | None = None


class HoldsView(BaseModel):
    count: int
    holds: list[dict[str, Any]]


class ModelLimitsBody(BaseModel):
    model_config = REQUEST

    # Strict: JSON's true is not a capacity of 1 (the fuzz test sent {"tpm": true}).
    tpm: StrictInt | None = Field(default=None, ge=1, le=CAPACITY_MAX, description="tokens a minute")
    rpm: StrictInt | None = Field(default=None, ge=1, le=CAPACITY_MAX, description="requests a minute")
    models: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=DEPLOYMENT_MODELS_MAX,
        description="the models the group's deployments are priced as (an alias's), for admits that name the group",
    )

    @model_validator(mode="after")
    def _some(self) -> ModelLimitsBody:
        if self.tpm is None and self.rpm is None and self.models is None:
            raise ValueError("set tpm, rpm, models or several; DELETE removes a model's limits")
        return self


class ModelLimitsView(BaseModel):
    model: str
    tpm: int | None
    rpm: int | None
    models: list[str] | None = None
    applied: bool = True


class RateLimitsView(BaseModel):
    models: list[ModelLimitsView]
    priority_reservation: dict[str, float]
    saturation: float
    key_priorities: dict[str, str]


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z), status_code=status, media_type="application/json", headers=headers
    )


async def estimate_call(body: AdmitBody, models: CallModels, api: ApiServices, at: datetime) -> tuple[str, Estimate]:
    """The model the call is priced as and its cost and tokens, priced with the current
    book from its prompt tokens and ``max_tokens`` (an upper bound when ``max_tokens``
    caps the reply) as the dearest of its group's models."""
    if body.prompt_tokens is not None:
        prompt = body.prompt_tokens
    elif body.messages is not None:
        text = "\n".join(message.text() for message in body.messages)
        counted = (
            await run_in_threadpool(count_tokens, text) if len(text) > TEXT_INLINE_CHARS_MAX else count_tokens(text)
        )
        prompt = counted + TOKENS_PER_MESSAGE * (len(body.messages) + 1)
    else:
        prompt = 0
    output = body.max_tokens if body.max_tokens is not None else api.settings.admission_default_max_tokens
    tokens = prompt + output
    if body.cost is not None:
        try:
            return models.candidates[0], Estimate(usd_to_nanos(body.cost, exact=True), tokens)
        except MoneyError as exc:
            raise ApiError(422, f"cost: {exc}", "invalid_request", field="cost") from exc
    book = api.admission.price_book
    if book is None:
        raise ApiError(503, "the price book is not loaded yet; retry", "not_ready", headers={"retry-after": "1"})
    # Both counts are within TokenCount's range (max_tokens was validated, prompt is capped).
    usage = TokenUsage.model_construct(prompt_tokens=min(prompt, TOKENS_PER_FIELD_MAX), completion_tokens=output)
    try:
        priced = dearest_estimate(book, models, usage, at, api.settings.admission_unpriced_estimate_nanos)
    except UnpricedModel as exc:
        raise ApiError(422, unpriced_message(exc, models.group), "unpriced_model", field="model") from exc
    except (InvalidUsage, ValueError) as exc:
        raise ApiError(422, f"cannot estimate the call: {exc}", "invalid_request") from exc
    return priced.model, Estimate(priced.cost_nanos, tokens)


def unpriced_message(exc: UnpricedModel, group: str) -> str:
    """Why a call is refused, and the three ways to admit it."""
    named = f"model group {group!r}: " if group != exc.model else ""
    return (
        f"{named}{exc}, so the call cannot be held and is refused; set "
        "SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD to hold a fallback estimate for such calls, "
        "give the call's estimated cost as `cost`, or record the group's models "
        "(`spend-ledger limits import config.yaml`)"
    )


ADMIT_BODY_BYTES_MAX = 4 * 1024 * 1024  # messages to count included
ADMIT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AdmitBody"}}},
}


@router.post(
    "/v1/admit",
    response_model=AdmitView,
    responses={
        402: {"model": ErrorView, "description": "a scope's budget has no room for the estimate"},
        409: {"model": ErrorView, "description": "the request id's hold already ended, or is for another call"},
        413: {"model": ErrorView, "description": f"the body is over {ADMIT_BODY_BYTES_MAX} bytes"},
        422: {"model": ErrorView},
        429: {"model": ErrorView, "description": "the key's share of the model's TPM or RPM is used up"},
        503: {"model": ErrorView, "description": "admission is still loading its holds"},
    },
    openapi_extra={"requestBody": ADMIT_BODY},
    summary="Admit a call: hold its estimated cost and rate share",
)
async def admit(request: Request) -> Response:
    """Answered from memory, at once: 402 when ``spent + held + estimate > max_budget`` for
    a scope, 429 when the key's TPM/RPM share is used up, else 200 with the hold (its
    ``held`` record is published right after). The same request id again returns its
    open hold.

    A gateway's hot path: the body is read and validated by hand (FastAPI's parameter
    machinery costs more than the decision, as ``bench.check`` measured for check)."""
    api: ApiServices = request.app.state.services
    authorize(api.keys, request.headers.get("authorization"), "client")
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > ADMIT_BODY_BYTES_MAX:
        raise ApiError(413, f"request body of {int(declared)} bytes is over {ADMIT_BODY_BYTES_MAX}", "too_large")
    raw = await request.body()
    if len(raw) > ADMIT_BODY_BYTES_MAX:
        raise ApiError(413, f"request body is over {ADMIT_BODY_BYTES_MAX} bytes", "too_large")
    try:
        body = AdmitBody.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(_body_errors(exc)) from exc
    if body.model is None and body.model_group is None:
        raise RequestValidationError([{"type": "missing", "loc": ("body", "model"), "msg": MODEL_MISSING}])
    service = api.admission
    if not service.ready.is_set():
        raise ApiError(503, "admission is loading its holds; retry shortly", "not_ready", headers={"retry-after": "1"})
    at = now()
    try:
        scopes = call_scopes(user=body.user, team=body.team, key=body.key, end_user=body.end_user, tags=body.tags)
    except (InvalidScope, ValueError) as exc:
        raise ApiError(422, str(exc), "invalid_scope") from exc
    try:
        models = call_models(body.model, body.model_group, body.models or (), service.book.rates.group_models)
    except ValueError as exc:
        raise ApiError(422, str(exc), "invalid_request", field="models") from exc
    priced_as, estimate = await estimate_call(body, models, api, at)
    who = rate_key(body.key, body.user)
    priority = service.book.rates.priority_of(who, body.priority)
    wanted = AdmitRequest(body.request_id, scopes, priced_as, who, priority, estimate, models.group)
    if not service.book.rates.knows(wanted.priority):
        known = sorted(service.book.rates.reservations)
        message = f"priority {wanted.priority!r} is not in priority_reservation {known}"
        raise ApiError(422, message, "invalid_request", field="priority")
    try:
        admission = service.book.admit(wanted, api.budget_state.snapshot, at)
    except RequestIdUsed as exc:
        raise ApiError(409, str(exc), "request_id_used") from exc
    except OverflowError as exc:
        raise ApiError(503, str(exc), "too_many_holds", headers={"retry-after": "1"}) from exc
    if admission.status == 402:
        error = {"message": admission.message, "type": "budget_exceeded", "scope": admission.refused_scope}
        return _json({"error": {**error, "scopes": _rooms(admission.scopes)}}, 402)
    if admission.status == 429:
        headers = {**admission.rate.headers(), "retry-after": str(admission.rate.reset_s)}
        return _json({"error": {"message": admission.message, "type": "rate_limited"}}, 429, headers)
    hold = admission.hold
    assert hold is not None
    if not admission.repeated:
        service.publish_hold(hold)
    return _json(_admitted(hold, admission), 200, admission.rate.headers())


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Field errors located in the body, as FastAPI's own validation reports them."""
    return [
        {**error, "loc": ("body", *error.get("loc", ()))}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _admitted(hold: Hold, admission: Admission) -> dict[str, Any]:
    rate = admission.rate
    return {
        **hold_view(hold),
        "admitted": True,
        "repeated": admission.repeated,
        "scopes": _rooms(admission.scopes, 0 if admission.repeated else hold.estimate_nanos),
        "tpm": None if rate.tokens is None else _rate(rate.tokens),
        "rpm": None if rate.requests is None else _rate(rate.requests),
    }


def _rate(dimension: Any) -> dict[str, int]:
    return {
        "limit": dimension.share,
        "remaining": dimension.available,
        "model_remaining": dimension.model_remaining,
        "active_keys": dimension.active_keys,
    }


def _rooms(rooms: tuple[ScopeRoom, ...], this_hold_nanos: int = 0) -> list[dict[str, Any]]:
    """Each scope as admission saw it; ``this_hold_nanos``: the hold just taken, counted
    in ``held_nanos`` as it is in ``remaining_budget_nanos``."""
    views = []
    for room in rooms:
        limit = room.binding
        cap = None if limit is None else limit.spec.max_budget_nanos
        remaining = None if room.remaining_nanos is None else max(0, room.remaining_nanos)
        views.append(
            {
                "scope_key": room.scope_key,
                "spend_nanos": 0 if limit is None else limit.spend_nanos,
                "held_nanos": room.held_nanos + this_hold_nanos,
                "max_budget": usd(cap),
                "max_budget_nanos": cap,
                "remaining_budget": usd(remaining),
                "remaining_budget_nanos": remaining,
            }
        )
    return views


def hold_view(hold: Hold) -> dict[str, Any]:
    """A hold as the api shows it."""
    return {
        "request_id": hold.request_id,
        "state": hold.state,
        "instance_id": hold.instance_id,
        "model": hold.model,
        "model_group": hold.model_group,
        "rate_key": hold.rate_key,
        "priority": hold.priority,
        "scope_keys": list(hold.scope_keys),
        "estimate_cost": usd(hold.estimate_nanos),
        "estimate_cost_nanos": hold.estimate_nanos,
        "estimated_tokens": hold.estimated_tokens,
        "held_at": hold.held_at,
        "expires_at": hold.expires_at,
    }


@router.delete(
    "/v1/admit/{request_id:path}",
    dependencies=[CLIENT],
    responses={409: {"model": ErrorView, "description": "the hold already ended"}},
    summary="Release a hold (the call failed or was not made)",
)
async def release(api: Services, request_id: Annotated[str, Path(min_length=1, max_length=200)]) -> Response:
    """Frees the hold's estimate and publishes ``released``."""
    service = api.admission
    at = now()
    hold = service.book.end(request_id, "released", at)
    if hold is None:
        ended = service.book.ended(request_id)
        if ended is not None:
            raise ApiError(409, f"the hold of {request_id!r} already ended: {ended}", "hold_ended")
        raise ApiError(404, f"no open hold has request id {request_id!r}", "not_found")
    await service.publish_event(hold.event("released", at, service.instance_id))
    return _json(hold_view(hold))


@router.get("/v1/admissions", dependencies=[ADMIN], response_model=HoldsView, summary="List holds")
async def list_holds(
    api: Services,
    state: Annotated[str, Query(pattern="^open$", description="only `open` for now")] = "open",
    scope: Annotated[str | None, Query(max_length=300, description="only holds on this scope key")] = None,
    limit: Annotated[int, Query(ge=1, le=HOLDS_LISTED_MAX)] = 1_000,
) -> Response:
    """Open holds, oldest first."""
    holds = sorted(api.admission.book.open_holds(), key=lambda hold: hold.held_at)
    if scope is not None:
        holds = [hold for hold in holds if scope in hold.scope_keys]
    return _json({"count": len(holds), "holds": [hold_view(hold) for hold in holds[:limit]]})


# -- rate limits ------------------------------------------------------------------------------

ModelPath = Annotated[str, Path(min_length=1, max_length=256, description="the model name, as calls name it")]


async def publish_rate_limit(api: ApiServices, record: RateLimitRecord, applied: Any) -> bool:
    """Publish a ``rate-limits`` record and wait (up to ``api_apply_wait_s``) until this
    instance's book has applied it; whether it has."""
    await api.publish_record(api.names.rate_limits, record.topic_key.encode(), record.model_dump_json().encode())
    deadline = time.monotonic() + api.settings.api_apply_wait_s
    while not applied():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(APPLY_POLL_S)
    return True


def _record(**fields: Any) -> RateLimitRecord:
    return RateLimitRecord(record_id=f"api-{uuid.uuid4().hex}", issued_at=now(), **fields)


def _model_name(model: str) -> str:
    try:
        return ModelLimitsProbe(model=model).model
    except ValueError as exc:
        raise ApiError(422, f"invalid model name: {exc}", "invalid_request") from exc


class ModelLimitsProbe(BaseModel):
    model: ModelName


@router.put(
    "/v1/models/{model:path}/limits",
    dependencies=[ADMIN],
    response_model=ModelLimitsView,
    responses={202: {"model": ModelLimitsView}, 422: {"model": ErrorView}},
    summary="Set a model's TPM/RPM capacity",
)
async def put_model_limits(api: Services, model: ModelPath, body: Annotated[ModelLimitsBody, Body()]) -> Response:
    """The model group's capacity across all its deployments (keys share it, DESIGN section
    10), and the models they are priced as; replaces all three."""
    name = _model_name(model)
    models = None if body.models is None else tuple(dict.fromkeys(body.models))
    record = _record(kind="model", model=name, tpm=body.tpm, rpm=body.rpm, models=models)
    rates = api.admission.book.rates

    def applied() -> bool:
        found = rates.capacities.get(name)
        capacity = None if found is None else (found.tpm, found.rpm)
        wanted = None if body.tpm is None and body.rpm is None else (body.tpm, body.rpm)
        return capacity == wanted and rates.group_models.get(name) == models

    done = await publish_rate_limit(api, record, applied)
    view = {"model": name, "tpm": body.tpm, "rpm": body.rpm, "models": None if models is None else list(models)}
    return _json({**view, "applied": done}, 200 if done else 202)


@router.get(
    "/v1/models/{model:path}/limits", dependencies=[ADMIN], response_model=ModelLimitsView, summary="A model's capacity"
)
async def get_model_limits(api: Services, model: ModelPath) -> Response:
    rates = api.admission.book.rates
    if model not in rates.capacities and model not in rates.group_models:
        raise ApiError(404, f"{model!r} has no TPM/RPM limits or models", "not_found")
    return _json(_model_limits(rates, model))


def _model_limits(rates: RateBook, model: str) -> dict[str, Any]:
    found = rates.capacities.get(model)
    models = rates.group_models.get(model)
    return {
        "model": model,
        "tpm": None if found is None else found.tpm,
        "rpm": None if found is None else found.rpm,
        "models": None if models is None else list(models),
        "applied": True,
    }


@router.delete(
    "/v1/models/{model:path}/limits",
    dependencies=[ADMIN],
    response_model=ModelLimitsView,
    summary="Remove a model's capacity",
)
async def delete_model_limits(api: Services, model: ModelPath) -> Response:
    name = _model_name(model)
    rates = api.admission.book.rates
    if name not in rates.capacities and name not in rates.group_models:
        raise ApiError(404, f"{name!r} has no TPM/RPM limits or models", "not_found")

    def applied() -> bool:
        return name not in rates.capacities and name not in rates.group_models

    done = await publish_rate_limit(api, _record(kind="model", model=name), applied)
    return _json({"model": name, "tpm": None, "rpm": None, "applied": done}, 200 if done else 202)


@router.get("/v1/models/limits", dependencies=[ADMIN], response_model=RateLimitsView, summary="Every model's capacity")
async def list_model_limits(api: Services) -> Response:
    rates = api.admission.book.rates
    models = [_model_limits(rates, name) for name in sorted({*rates.capacities, *rates.group_models})]
    return _json(
        {
            "models": models,
            "priority_reservation": {name: float(value) for name, value in rates.reservations.items()},
            "saturation": float(rates.saturation),
            "key_priorities": dict(sorted(rates.key_priorities.items())),
        }
    )


class ReservationBody(BaseModel):
    model_config = REQUEST

    priority_reservation: Reservation | None = Field(
        description='LiteLLM\'s format, e.g. {"dev": 0, "prod": 1}; null: back to the setting'
    )


def _reservation_form(body: Any) -> str:
    """``wrapped`` for ``{"priority_reservation": {...} | null}``; any other body is
    LiteLLM's bare mapping (where a priority may even be named ``priority_reservation``)."""
    wrapped = isinstance(body, dict) and set(body) == {"priority_reservation"}
    return "wrapped" if wrapped and isinstance(body["priority_reservation"], dict | None) else "litellm"


ReservationRequest = Annotated[
    Annotated[Reservation, Tag("litellm")] | Annotated[ReservationBody, Tag("wrapped")],
    Discriminator(_reservation_form),
]
RESERVATION_EXAMPLES: dict[str, Example] = {
    "litellm": {"summary": "LiteLLM's mapping: priority to fraction", "value": {"dev": 0, "prod": 1}},
    "wrapped": {"summary": "the same, wrapped", "value": {"priority_reservation": {"dev": 0.25, "prod": 0.75}}},
    "clear": {"summary": "back to the api's setting", "value": {"priority_reservation": None}},
}


@router.put(
    "/v1/priority_reservation",
    dependencies=[ADMIN],
    responses={202: {"description": "published, not applied yet"}, 422: {"model": ErrorView}},
    summary="Set the priority reservation",
)
async def put_reservation(
    api: Services, body: Annotated[ReservationRequest, Body(openapi_examples=RESERVATION_EXAMPLES)]
) -> Response:
    """The fraction of every model's TPM/RPM that each priority's keys share: LiteLLM's
    ``{"dev": 0, "prod": 1}`` as it is, or wrapped as ``{"priority_reservation": ...}``
    (``null`` there goes back to the setting)."""
    rates = api.admission.book.rates
    wanted = body.priority_reservation if isinstance(body, ReservationBody) else body
    record = _record(kind="priority_reservation", reservation=wanted)

    def applied() -> bool:
        if wanted is None:
            return rates.reservation is None
        return rates.reservation == {name: Fraction(str(value)) for name, value in wanted.items()}

    done = await publish_rate_limit(api, record, applied)
    current = {name: float(value) for name, value in rates.reservations.items()}
    return _json({"priority_reservation": current, "applied": done}, 200 if done else 202)


@router.get("/v1/priority_reservation", dependencies=[ADMIN], summary="The priority reservation in force")
async def get_reservation(api: Services) -> Response:
    rates = api.admission.book.rates
    return _json({"priority_reservation": {name: float(value) for name, value in rates.reservations.items()}})


async def set_key_priority(api: ApiServices, key_id: str, priority: str | None) -> bool:
    """Publish a key's priority (``PUT /v1/budgets/key/{id}`` with ``priority``)."""
    rates = api.admission.book.rates
    record = _record(kind="key_priority", key_id=key_id, priority=priority)
    return await publish_rate_limit(api, record, lambda: rates.key_priorities.get(key_id) == priority)


__all__ = ["router", "set_key_priority"]
