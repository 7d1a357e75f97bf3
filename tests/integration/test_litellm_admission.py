"""The LiteLLM callback admitting proxy requests, against a real broker, worker and api,
with LiteLLM's own request objects (``UserAPIKeyAuth``, ``DualCache``) and calls
(``litellm.acompletion`` with ``mock_response``: no provider is reached): LiteLLM's dynamic
rate limiter walkthrough, a team over budget refused with LiteLLM's budget error, a failed
call releasing its hold and a successful one settling it."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads: nothing is fetched

import litellm
from fastapi import HTTPException
from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth

import ledger
from ledger.api.admission import TOKENS_PER_MESSAGE
from ledger.broker import EmbeddedBroker
from ledger.client import LedgerClient
from ledger.integrations.litellm_callback import SpendLedgerCallback
from ledger.tokenizer import count_tokens
from tests.integration.builders import in_one_minute, unique, until
from tests.integration.conftest import ApiProcess, Ledger, running_ledger
from tests.one_loop import close_test_loop, run_async

MASTER_KEY = "sk-test-litellm-admission-master"
WAIT_S = 60.0
MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]
PROMPT_ESTIMATE = count_tokens(MESSAGES[0]["content"]) + TOKENS_PER_MESSAGE * 2  # as /v1/admit counts it


@dataclass
class Stack:
    ledger: Ledger
    api: ApiProcess
    client: LedgerClient
    callback: SpendLedgerCallback


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_ledger(broker, tmp_path_factory.mktemp("litellm-admission"), MASTER_KEY) as (running, api):
        callback = SpendLedgerCallback(api_url=api.url, key=MASTER_KEY)
        with LedgerClient(api.url, MASTER_KEY) as client:
            yield Stack(running, api, client, callback)
        callback.close()


@pytest.fixture(autouse=True)
def clean_litellm() -> Iterator[None]:
    """No callbacks before and after each test; each test's asyncio calls share one loop."""
    litellm.logging_callback_manager._reset_all_callbacks()
    yield
    close_test_loop()
    litellm.logging_callback_manager._reset_all_callbacks()


def proxy_request(model: str, key: UserAPIKeyAuth, max_tokens: int) -> dict[str, Any]:
    """A chat request as the proxy hands it to the pre-call hook: its call id, and the key's
    user, team and hash in ``metadata`` (what LiteLLM's logging payload reports)."""
    return {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "litellm_call_id": str(uuid.uuid4()),
        "metadata": {
            "user_api_key_hash": key.api_key,
            "user_api_key_team_id": key.team_id,
            "user_api_key_user_id": key.user_id,
        },
        "proxy_server_request": {"url": "/chat/completions", "method": "POST", "headers": {}, "body": {}},
    }


def admit(callback: SpendLedgerCallback, key: UserAPIKeyAuth, data: dict[str, Any]) -> None:
    assert run_async(callback.async_pre_call_hook(key, DualCache(), data, "completion")) is None


def open_ids(stack: Stack, team: str) -> list[str]:
    return [hold.request_id for hold in stack.client.admissions(scope=f"team:{team}")]


async def until_async(probe: Callable[[], Any], holds: Callable[[Any], bool], what: str) -> Any:
    """``until`` that lets the test's loop run (LiteLLM's logging worker lives on it)."""
    deadline = time.monotonic() + WAIT_S
    while not holds(found := await asyncio.to_thread(probe)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {found!r}")
        await asyncio.sleep(0.05)
    return found


def test_litellm_walkthrough_sixty_tpm_two_keys_thirty_tokens_a_call(stack: Stack) -> None:
    model = "gpt-4.1-nano"  # priced: the hook sends messages and max_tokens, never a cost
    stack.client.set_model_limits(model, tpm=60)
    key_1 = UserAPIKeyAuth(api_key=unique("sk-walkthrough-1"), team_id=unique("team"))
    key_2 = UserAPIKeyAuth(api_key=unique("sk-walkthrough-2"), team_id=unique("team"))
    thirty_tokens = 30 - PROMPT_ESTIMATE
    in_one_minute()

    first = proxy_request(model, key_1, thirty_tokens)
    admit(stack.callback, key_1, first)
    [hold] = stack.client.admissions(scope=f"team:{key_1.team_id}")
    assert (hold.request_id, hold.estimated_tokens, hold.model) == (first["litellm_call_id"], 30, model)
    admit(stack.callback, key_2, proxy_request(model, key_2, thirty_tokens))

    with pytest.raises(HTTPException) as refused:
        admit(stack.callback, key_2, proxy_request(model, key_2, thirty_tokens))
    assert refused.value.status_code == 429
    assert refused.value.detail == {"error": f"Key={key_2.api_key} over available TPM=0. Model TPM=0, Active keys=2"}
    assert refused.value.headers is not None
    assert 1 <= int(refused.value.headers["retry-after"]) <= 60
    assert isinstance(refused.value, litellm.RateLimitError)  # LiteLLM's ProxyRateLimitError is both


def test_a_team_over_budget_is_refused_with_litellms_budget_error(stack: Stack) -> None:
    team = unique("team-small")
    assert stack.client.set_budget("team", team, max_budget="0.000001").applied  # 1,000 nanos
    key = UserAPIKeyAuth(api_key=unique("sk-small"), team_id=team)
    with pytest.raises(litellm.BudgetExceededError) as refused:
        admit(stack.callback, key, proxy_request("gpt-4o-mini", key, 100))
    assert isinstance(refused.value, ledger.BudgetExceededError)  # and the SDK's, with exact nanos
    assert refused.value.scope == f"team:{team}"
    assert refused.value.max_budget_nanos == 1_000
    assert (refused.value.status_code, refused.value.type) == (400, "budget_exceeded")
    assert refused.value.message.startswith("Budget has been exceeded! Current cost: 0, Max budget: 0.000001")
    assert open_ids(stack, team) == []


def test_a_failed_call_releases_its_hold(stack: Stack) -> None:
    team = unique("team-failing")
    assert stack.client.set_budget("team", team, max_budget="1").applied
    key = UserAPIKeyAuth(api_key=unique("sk-failing"), team_id=team)
    data = proxy_request("gpt-4o-mini", key, 100)
    admit(stack.callback, key, data)
    assert open_ids(stack, team) == [data["litellm_call_id"]]
    litellm.callbacks = [stack.callback]

    async def failing_call() -> None:
        with pytest.raises(litellm.InternalServerError):
            await litellm.acompletion(**data, mock_response=Exception("the provider is down"))
        await until_async(lambda: open_ids(stack, team), lambda ids: ids == [], "LiteLLM's failure event to release")

    run_async(failing_call())
    states = {
        record["state"]
        for record in stack.ledger.read_json(stack.ledger.topics.admissions)
        if record["request_id"] == data["litellm_call_id"]
    }
    assert states == {"held", "released"}


def test_a_successful_call_settles_its_hold_with_its_usage_event(stack: Stack) -> None:
    team = unique("team-fine")
    assert stack.client.set_budget("team", team, max_budget="1").applied
    key = UserAPIKeyAuth(api_key=unique("sk-fine"), team_id=team, user_id=unique("user"))
    data = proxy_request("gpt-4o-mini", key, 100)
    admit(stack.callback, key, data)
    call_id = data["litellm_call_id"]
    litellm.callbacks = [stack.callback]
    published = stack.callback.published

    async def successful_call() -> Any:
        response = await litellm.acompletion(**data, mock_response="fine")
        # LiteLLM runs async success callbacks in a task on this loop: keep it open until they ran.
        await until_async(lambda: stack.callback.published, lambda n: n > published, "the usage event")
        return response

    response = run_async(successful_call())
    assert response.id != call_id  # LiteLLM's payload id is the response's; the event carries the call id
    until(lambda: open_ids(stack, team), lambda ids: ids == [], "the usage event to settle the hold", timeout_s=WAIT_S)

    def entries(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [entry for batch in batches for entry in batch["entries"] if entry["event_id"] == call_id]

    [entry] = entries(stack.ledger.read_json(stack.ledger.topics.ledger_entries, lambda found: bool(entries(found))))
    assert set(entry["scope_keys"]) == {"global:*", f"team:{team}", f"key:{key.api_key}", f"user:{key.user_id}"}
    # The hold settles from ledger-entries; the team's budget folds the charge a hop later.
    budget = until(lambda: stack.client.get_budget("team", team), lambda b: b.spend_nanos > 0, "the team's charge")
    assert budget.spend_nanos == entry["cost_nanos"] == 10 * 150 + 20 * 600  # LiteLLM's mock usage: 10 in, 20 out


def test_a_call_id_reused_by_a_client_never_makes_a_call_free(stack: Stack) -> None:
    """The proxy takes ``litellm_call_id`` from a client's ``x-litellm-call-id`` header: two
    calls under one id are both charged, the second under its own response id."""
    team = unique("team-reuse")
    assert stack.client.set_budget("team", team, max_budget="1").applied
    key = UserAPIKeyAuth(api_key=unique("sk-reuse"), team_id=team)
    data = proxy_request("gpt-4o-mini", key, 100)
    admit(stack.callback, key, data)
    admit(stack.callback, key, dict(data))  # already held: checked instead, not held twice
    assert open_ids(stack, team) == [data["litellm_call_id"]]
    litellm.callbacks = [stack.callback]
    published = stack.callback.published

    async def two_calls() -> list[Any]:
        responses = [await litellm.acompletion(**data, mock_response="fine") for _ in range(2)]
        await until_async(lambda: stack.callback.published, lambda n: n >= published + 2, "both usage events")
        return responses

    _, second = run_async(two_calls())
    wanted = {data["litellm_call_id"], second.id}

    def charged(batches: list[dict[str, Any]]) -> set[str]:
        return {entry["event_id"] for batch in batches for entry in batch["entries"]} & wanted

    stack.ledger.read_json(stack.ledger.topics.ledger_entries, lambda found: charged(found) == wanted)


# -- model groups: the proxy's model_name is an alias for a priced deployment ----------------


def alias_router(group: str, model: str = "gpt-4o-mini") -> litellm.Router:
    """A proxy router whose ``group`` (the request's ``model``) is served by ``model``."""
    return litellm.Router(model_list=[{"model_name": group, "litellm_params": {"model": model}}])


def test_an_alias_group_is_held_as_its_deployment_and_rate_limited_as_the_group(stack: Stack) -> None:
    """The reported hole: team-gpt was not priced, so its calls ran unheld and rpm=2 never applied."""
    group = unique("team-gpt")
    stack.client.set_model_limits(group, rpm=2)
    callback = SpendLedgerCallback(api_url=stack.api.url, key=MASTER_KEY, router=alias_router(group))
    key = UserAPIKeyAuth(api_key=unique("sk-alias"), team_id=unique("team-alias"))
    in_one_minute()
    try:
        admit(callback, key, proxy_request(group, key, 100))
        [hold] = stack.client.admissions(scope=f"team:{key.team_id}")
        assert (hold.model, hold.model_group) == ("gpt-4o-mini", group)
        assert hold.estimate_cost_nanos == PROMPT_ESTIMATE * 150 + 100 * 600  # gpt-4o-mini's price
        admit(callback, key, proxy_request(group, key, 100))
        for _ in range(2):
            with pytest.raises(HTTPException) as refused:
                admit(callback, key, proxy_request(group, key, 100))
            assert refused.value.status_code == 429
            assert "over available RPM=0" in refused.value.detail["error"]
    finally:
        callback.close()


def test_six_concurrent_alias_calls_never_hold_past_a_small_budget(stack: Stack) -> None:
    """The issue's run: six concurrent alias calls on $0.0005 spent $0.00135 unheld."""
    group, team = unique("team-gpt"), unique("team-concurrent")
    assert stack.client.set_budget("team", team, max_budget="0.0005").applied
    callback = SpendLedgerCallback(api_url=stack.api.url, key=MASTER_KEY, router=alias_router(group))
    key = UserAPIKeyAuth(api_key=unique("sk-concurrent"), team_id=team)
    each_nanos = PROMPT_ESTIMATE * 150 + 200 * 600

    async def six_at_once() -> list[BaseException | None]:
        hooks = [
            callback.async_pre_call_hook(key, DualCache(), proxy_request(group, key, 200), "completion")
            for _ in range(6)
        ]
        return list(await asyncio.gather(*hooks, return_exceptions=True))

    try:
        answers = run_async(six_at_once())
    finally:
        callback.close()
    refusals = [answer for answer in answers if answer is not None]
    assert all(isinstance(refusal, litellm.BudgetExceededError) for refusal in refusals), refusals
    holds = stack.client.admissions(scope=f"team:{team}")
    assert len(holds) == 6 - len(refusals) == 500_000 // each_nanos
    assert sum(hold.estimate_cost_nanos for hold in holds) <= 500_000


def test_an_unpriced_alias_is_refused_as_the_proxy_refuses_never_run_unheld(stack: Stack) -> None:
    from litellm.proxy._types import ProxyException

    alias = unique("nobody-knows-this-alias")  # not in the router, nothing recorded, no price
    key = UserAPIKeyAuth(api_key=unique("sk-unpriced"), team_id=unique("team-unpriced"))
    with pytest.raises(ProxyException) as refused:
        admit(stack.callback, key, proxy_request(alias, key, 100))
    assert (refused.value.code, refused.value.type, refused.value.param) == ("400", "unpriced_model", "model")
    assert alias in refused.value.message
    assert "SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD" in refused.value.message
    assert open_ids(stack, key.team_id) == []


def test_an_alias_calls_usage_event_names_its_group_and_settles_its_hold(stack: Stack) -> None:
    group, team = unique("team-gpt"), unique("team-settled-alias")
    assert stack.client.set_budget("team", team, max_budget="1").applied
    router = alias_router(group)
    callback = SpendLedgerCallback(api_url=stack.api.url, key=MASTER_KEY, router=router)
    key = UserAPIKeyAuth(api_key=unique("sk-settled-alias"), team_id=team)
    data = proxy_request(group, key, 100)
    litellm.callbacks = [callback]

    async def call_through_the_router() -> None:
        await callback.async_pre_call_hook(key, DualCache(), data, "completion")
        await router.acompletion(**data, mock_response="fine")
        await until_async(lambda: callback.published, lambda n: n >= 1, "the usage event")

    try:
        run_async(call_through_the_router())
    finally:
        callback.close()
    until(lambda: open_ids(stack, team), lambda ids: ids == [], "the usage event to settle the hold", timeout_s=WAIT_S)
    call_id = data["litellm_call_id"]

    def events(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = [event for batch in batches for event in batch.get("events", [batch]) if isinstance(event, dict)]
        return [event for event in found if event.get("event_id") == call_id]

    [event] = events(stack.ledger.read_json(stack.ledger.topics.usage, lambda found: bool(events(found))))
    assert (event["model"], event["model_group"]) == ("gpt-4o-mini", group)
