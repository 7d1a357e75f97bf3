"""Budget routes: CRUD and reset as ``budget-commands`` events, and ``check``.

A write publishes a command and waits (up to ``api_apply_wait_s``) until the worker's
snapshot of the scope shows it folded in, so a client reads its own write: 200 with the
scope as applied, or 202 with the scope as it will be once the worker catches up.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from ledger.api.admission import set_key_priority
from ledger.api.auth import authorize
from ledger.api.deps import ADMIN, ApiError, Services, now, repeated_names, repeated_query_error
from ledger.api.schemas import (
    BudgetRequest,
    BudgetView,
    BudgetWritten,
    CheckView,
    ErrorView,
    ResetRequest,
    check_views,
)
from ledger.api.services import ApiServices
from ledger.domain.budgets import BudgetCommand, BudgetState, CommandAction, alert_message
from ledger.domain.checks import call_scopes, check, current_state
from ledger.domain.fold import apply_command, new_state
from ledger.domain.scopes import SCOPE_KINDS, InvalidScope, ScopeKind, scope_key

router = APIRouter(tags=["budgets"])
BUDGETS_LISTED_MAX = 10_000

KindPath = Annotated[ScopeKind, Path(description="global, user, team, key, end_user or tag")]
IdPath = Annotated[str, Path(min_length=1, max_length=256, description="the scope id (`*` for global)")]


def _scope(kind: str, scope_id: str) -> str:
    try:
        return scope_key(kind, scope_id)
    except InvalidScope as exc:
        raise ApiError(422, str(exc), "invalid_scope") from exc


async def _write(
    api: ApiServices,
    key: str,
    action: CommandAction,
    **fields: Any,
) -> JSONResponse:
    command = BudgetCommand(
        command_id=f"api-{uuid.uuid4().hex}",
        scope_key=key,
        action=action,
        issued_at=now(),
        **fields,
    )
    published = await api.publish_command(command)
    applied = await api.budget_state.wait_applied(
        key, f"c{published.partition}", published.offset, api.settings.api_apply_wait_s
    )
    state = applied
    if state is None:  # not confirmed yet: what the worker will hold once it folds it
        state = api.budget_state.state(key) or new_state(key)
        state, _ = apply_command(current_state(state, command.issued_at), command)
    view = BudgetView.of(state)
    written = BudgetWritten(**view.model_dump(), command_id=command.command_id, applied=applied is not None)
    return JSONResponse(written.model_dump(mode="json"), status_code=200 if applied is not None else 202)


@router.put(
    "/v1/budgets/{kind}/{scope_id:path}",
    dependencies=[ADMIN],
    response_model=BudgetWritten,
    responses={202: {"model": BudgetWritten}, 422: {"model": ErrorView}},
    summary="Set a scope's budgets",
)
async def put_budget(
    api: Services,
    kind: KindPath,
    scope_id: IdPath,
    request: Annotated[BudgetRequest, Body()],
) -> JSONResponse:
    """Set the scope's whole list of limits (an ``upsert`` command). A limit whose duration
    is unchanged keeps its window and spend."""
    key = _scope(kind, scope_id)
    if request.priority is not None and kind != "key":
        raise ApiError(422, "priority is set on a key (PUT /v1/budgets/key/{id}), or per admit", "invalid_request")
    if request.priority is not None:
        applied = await set_key_priority(api, scope_id, request.priority)
        if not request.specs():
            state = api.budget_state.state(key) or new_state(key)
            view = BudgetView.of(current_state(state, now()))
            body = {
                **view.model_dump(mode="json"),
                "command_id": None,
                "applied": applied,
                "priority": request.priority,
            }
            return JSONResponse(body, status_code=200 if applied else 202)
    return await _write(api, key, "upsert", budgets=request.specs(), alias=request.alias)


@router.delete(
    "/v1/budgets/{kind}/{scope_id:path}", dependencies=[ADMIN], response_model=BudgetWritten, summary="Remove budgets"
)
async def delete_budget(api: Services, kind: KindPath, scope_id: IdPath) -> JSONResponse:
    """Remove every limit of the scope (its spend history stays)."""
    key = _scope(kind, scope_id)
    if not _has_limits(api.budget_state.state(key)):
        raise ApiError(404, f"{key} has no budget", "not_found")
    return await _write(api, key, "delete")


@router.post(
    "/v1/budgets/{kind}/{scope_id:path}/reset",
    dependencies=[ADMIN],
    response_model=BudgetWritten,
    summary="Open a new window now",
)
async def reset_budget(
    api: Services,
    kind: KindPath,
    scope_id: IdPath,
    request: Annotated[ResetRequest | None, Body()] = None,
) -> JSONResponse:
    """Start a new window now for every limit of the scope, or only ``limit_name``."""
    key = _scope(kind, scope_id)
    state = api.budget_state.state(key)
    if not _has_limits(state):
        raise ApiError(404, f"{key} has no budget to reset", "not_found")
    assert state is not None
    limit_name = None if request is None else request.limit_name
    if limit_name is not None and limit_name not in {limit.spec.limit_name for limit in state.limits}:
        names = ", ".join(limit.spec.limit_name for limit in state.limits)
        raise ApiError(422, f"{key} has no limit named {limit_name!r}; its limits: {names}", "invalid_request")
    return await _write(api, key, "reset", limit_name=limit_name)


@router.get("/v1/budgets/{kind}/{scope_id:path}", dependencies=[ADMIN], response_model=BudgetView, summary="One scope")
async def get_budget(api: Services, kind: KindPath, scope_id: IdPath) -> BudgetView:
    """The scope's limits, window spend and ``budget_reset_at``, as the worker holds them."""
    key = _scope(kind, scope_id)
    state = api.budget_state.state(key)
    if state is None:
        raise ApiError(404, f"nothing is known of {key}: no budget and no spend", "not_found")
    return BudgetView.of(current_state(state, now()))


@router.get("/v1/budgets", dependencies=[ADMIN], response_model=list[BudgetView], summary="Every budget")
async def list_budgets(
    api: Services,
    kind: Annotated[ScopeKind | None, Query(description="only scopes of this kind")] = None,
) -> list[BudgetView]:
    """Every scope with a budget (of ``kind``), ordered by scope key."""
    at = now()
    keys = sorted(key for key in api.budget_state.scope_keys() if kind is None or key.startswith(f"{kind}:"))
    views = []
    for key in keys:
        state = api.budget_state.state(key)
        if _has_limits(state):
            assert state is not None
            views.append(BudgetView.of(current_state(state, at)))
        if len(views) >= BUDGETS_LISTED_MAX:
            break
    return views


def _has_limits(state: BudgetState | None) -> bool:
    return state is not None and bool(state.limits)


CHECK_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 256},
        "description": text,
    }
    for name, text in (
        ("user", "the user the call is for"),
        ("team", "the team"),
        ("key", "the API key"),
        ("end_user", "the end user"),
        ("model", "the model (per-model limits count only for their model)"),
    )
] + [
    {
        "name": "tag",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
        "description": "a tag of the call (repeatable)",
    }
]
CHECK_VALUE_CHARS_MAX = 256


@router.get(
    "/v1/check",
    response_model=CheckView,
    responses={402: {"model": ErrorView, "description": "a scope is over budget"}, 422: {"model": ErrorView}},
    tags=["check"],
    summary="May this call go ahead?",
    openapi_extra={"parameters": CHECK_PARAMETERS},
)
async def check_call(request: Request) -> Response:
    """Every scope the call would be charged to (global always), from live state in
    memory: 200 when all are within budget, 402 with LiteLLM's message when one is over.

    The hot path of a gateway: the query is read by hand (FastAPI's parameter machinery
    cost more than the check itself, measured by ``bench.check``)."""
    api: ApiServices = request.app.state.services
    authorize(api.keys, request.headers.get("authorization"), "client")
    query = request.query_params
    unknown = set(query) - CHECK_QUERY_NAMES
    if unknown:
        raise ApiError(
            422, f"unknown query parameters: {sorted(unknown)}; expected {sorted(CHECK_QUERY_NAMES)}", "invalid_request"
        )
    if len(query) != len(query.multi_items()):
        repeated = repeated_names(query.multi_items(), CHECK_QUERY_NAMES - {"tag"})
        if repeated:
            raise repeated_query_error(repeated)
    values = {name: query.get(name) for name in ("user", "team", "key", "end_user", "model")}
    too_long = [name for name, value in values.items() if value is not None and len(value) > CHECK_VALUE_CHARS_MAX]
    if too_long:
        raise ApiError(422, f"{too_long[0]} is longer than {CHECK_VALUE_CHARS_MAX} characters", "invalid_request")
    try:
        scopes = call_scopes(
            user=values["user"],
            team=values["team"],
            key=values["key"],
            end_user=values["end_user"],
            tags=query.getlist("tag"),
        )
    except (InvalidScope, ValueError) as exc:
        raise ApiError(422, str(exc), "invalid_scope") from exc
    model = values["model"]
    result = check(api.budget_state.states(scopes), scopes, model, now())
    refused = result.refused_by
    if refused is None:
        body: dict[str, object] = {"allowed": True, "model": model, "scopes": check_views(result)}
        status = 200
    else:
        limit = refused.exceeded[0]
        message = alert_message("exceeded", limit.spend_nanos, limit.spec)
        error = {"message": message, "type": "budget_exceeded", "scope": refused.scope_key}
        body = {"error": {**error, "scopes": check_views(result)}}
        status = 402
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


CHECK_QUERY_NAMES = frozenset({"user", "team", "key", "end_user", "model", "tag"})


__all__ = ["SCOPE_KINDS", "router"]
