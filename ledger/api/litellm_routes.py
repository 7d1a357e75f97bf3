"""LiteLLM's hosted BudgetManager endpoints: ``POST /get_budget`` and ``POST /set_budget``.

A LiteLLM ``BudgetManager(project_name, client_type="hosted", api_base=...)`` pointed at
this api reads and saves its users here. A save becomes budget commands (event-sourced
like every other budget change) instead of replacing a stored dictionary, so two managers
saving at once do not erase each other's users. See ``ledger.integrations.litellm_budget``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ledger.api.deps import ADMIN, ApiError, Services, now
from ledger.integrations.litellm_budget import (
    InvalidBudgetDict,
    commands_from_user_dict,
    get_budget_response,
    set_budget_response,
    user_dict,
)

router = APIRouter(tags=["litellm"], dependencies=[ADMIN])
USERS_MAX = 10_000


class ProjectRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    project_name: str = Field(min_length=1, max_length=256)


class SaveRequest(ProjectRequest):
    user_dict: dict[str, Any] = Field(max_length=USERS_MAX)


@router.post("/get_budget", summary="LiteLLM hosted BudgetManager: load")
async def get_budget(api: Services, request: Annotated[ProjectRequest, Body()]) -> dict[str, Any]:
    """``{"status": "success", "data": user_dict}`` of every ``user:`` scope with a budget."""
    states = {
        key: state
        for key in api.budget_state.scope_keys()
        if key.startswith("user:")
        if (state := api.budget_state.state(key)) is not None
    }
    return get_budget_response(user_dict(states, now()))


@router.post(
    "/set_budget",
    summary="LiteLLM hosted BudgetManager: save",
    responses={202: {"description": "published, not all applied within api_apply_wait_s"}},
)
async def set_budget(api: Services, request: Annotated[SaveRequest, Body()]) -> JSONResponse:
    """Turn a saved ``user_dict`` into budget commands (new or changed budgets, resets), and
    answer once the worker has applied them all, so a ``/get_budget`` right after reads the
    save: 200, or 202 when they were not all applied within ``api_apply_wait_s``."""
    users = [f"user:{name}" for name in request.user_dict if isinstance(name, str)]
    current = {key: state for key in users if (state := api.budget_state.state(key)) is not None}
    try:
        commands = commands_from_user_dict(
            request.project_name, request.user_dict, current, now(), id_prefix=f"litellm-{uuid.uuid4().hex[:16]}"
        )
    except InvalidBudgetDict as exc:
        raise ApiError(422, str(exc), "invalid_request") from exc
    published = [(command.scope_key, await api.publish_command(command)) for command in commands]
    deadline = time.monotonic() + api.settings.api_apply_wait_s
    applied = True
    for scope_key, at in published:
        left = max(0.0, deadline - time.monotonic())
        if await api.budget_state.wait_applied(scope_key, f"c{at.partition}", at.offset, left) is None:
            applied = False
            break
    return JSONResponse({**set_budget_response(len(commands)), "applied": applied}, status_code=200 if applied else 202)
