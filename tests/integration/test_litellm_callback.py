"""The LiteLLM callback against the real embedded broker, worker and api: calls made with
``litellm.completion`` and ``litellm.acompletion`` (``mock_response``: no provider is
reached) are charged by the worker at LiteLLM's own cost, over HTTP and over Kafka, and a
team over budget is refused before its next call is made."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads: nothing is fetched

import litellm
from litellm.caching.dual_cache import DualCache
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth

import ledger
from ledger.broker import EmbeddedBroker
from ledger.client import LedgerClient, SpendReport, SpendRow
from ledger.domain.money import nanos_to_usd
from ledger.integrations.litellm_callback import SpendLedgerCallback
from ledger.sdk.guard import BudgetExceededError, current_cost_nanos, reset_current_cost
from tests.integration.builders import unique, until
from tests.integration.conftest import ApiProcess, Ledger, running_ledger
from tests.one_loop import close_test_loop, run_async


@pytest.fixture(autouse=True)
def _one_loop_per_test() -> Iterator[None]:
    """Each test's asyncio calls share a loop, drained and closed after it (tests.one_loop)."""
    yield
    close_test_loop()


MASTER_KEY = "sk-test-litellm-callback-master"
WAIT_S = 60.0
ONE_NANO_USD = Decimal("1e-9")
MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]
# Models that LiteLLM's cost map and the bundled genai-prices book price the same, cache reads
# included (gpt-3.5-turbo and gpt-4-turbo do not: genai-prices has no cache discount for them).
AGREEING_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "claude-sonnet-4-20250514")


@dataclass
class Stack:
    ledger: Ledger
    api: ApiProcess
    client: LedgerClient


@dataclass
class Call:
    """One LiteLLM call as the test made it, and what LiteLLM said it cost."""

    event_id: str
    response_cost: float
    scope_keys: set[str]


class ProviderCalls(CustomLogger):  # type: ignore[misc]
    """Counts LiteLLM's pre-API-call logs: LiteLLM writes one right before it calls the
    provider (a mock provider too), so a refused call leaves none."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with (
        running_ledger(broker, tmp_path_factory.mktemp("litellm-callback"), MASTER_KEY) as (running, api),
        LedgerClient(api.url, MASTER_KEY) as client,
    ):
        yield Stack(running, api, client)


@pytest.fixture(autouse=True)
def clean_litellm() -> Iterator[None]:
    """No callbacks, no process budget and nothing spent, before and after each test."""
    saved = ledger.max_budget
    litellm.logging_callback_manager._reset_all_callbacks()
    reset_current_cost()
    yield
    litellm.logging_callback_manager._reset_all_callbacks()
    ledger.max_budget = saved
    reset_current_cost()


def mock_with_usage(model: str, prompt: int, completion: int, cached: int) -> dict[str, Any]:
    """A mock response carrying the usage a provider would report (LiteLLM's own mock has 10/20)."""
    return {
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "done"}}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def request_for(n: int, model: str) -> tuple[dict[str, Any], set[str]]:
    """The n-th call's keyword arguments (its own user, team and tags) and the scopes it charges."""
    user, team, tag, customer = unique(f"user{n}"), unique(f"team{n % 2}"), unique("tag"), unique("customer")
    mock: str | dict[str, Any] = (
        "a reply" if n % 3 == 0 else mock_with_usage(model, 1_000 + 1_337 * n, 50 + 97 * n, cached=256 * (n % 4))
    )
    request = {
        "model": model,
        "messages": MESSAGES,
        "mock_response": mock,
        "user": customer,
        "metadata": {"user_api_key_user_id": user, "user_api_key_team_id": team, "tags": [tag, "litellm"]},
    }
    scopes = {"global:*", f"user:{user}", f"team:{team}", f"end_user:{customer}", f"tag:{tag}", "tag:litellm"}
    return request, scopes


def make_calls(callback: SpendLedgerCallback, first: int, count: int) -> list[Call]:
    """``count`` calls through ``callback``, alternately ``litellm.completion`` and
    ``litellm.acompletion``; returns once the callback has published every one."""
    requests = [request_for(n, AGREEING_MODELS[n % len(AGREEING_MODELS)]) for n in range(first, first + count)]
    sync_requests, async_requests = requests[0::2], requests[1::2]
    calls = []
    for request, scopes in sync_requests:
        response = litellm.completion(**request)
        calls.append(Call(response.id, response._hidden_params["response_cost"], scopes))
    wanted = callback.published + count

    async def acall_all() -> list[Any]:
        responses = await asyncio.gather(*(litellm.acompletion(**request) for request, _ in async_requests))
        # LiteLLM runs async success callbacks in a task on this loop: keep it open until they ran.
        deadline = time.monotonic() + WAIT_S
        while callback.published < wanted and not callback.dropped and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return responses

    for response, (_, scopes) in zip(run_async(acall_all()), async_requests, strict=True):
        calls.append(Call(response.id, response._hidden_params["response_cost"], scopes))
    return calls


def entries_by_event_id(stack: Stack, event_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The worker's ledger entries of these events, once all are on ``ledger-entries``."""

    def entries(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [entry for batch in batches for entry in batch["entries"] if entry["event_id"] in event_ids]

    found = entries(
        stack.ledger.read_json(
            stack.ledger.topics.ledger_entries, lambda batches: {e["event_id"] for e in entries(batches)} >= event_ids
        )
    )
    assert sorted(entry["event_id"] for entry in found) == sorted(event_ids)  # each charged once
    return {entry["event_id"]: entry for entry in found}


def test_every_call_is_charged_once_by_the_worker_at_litellms_cost_over_http_and_kafka(stack: Stack) -> None:
    over_http = SpendLedgerCallback(api_url=stack.api.url, key=MASTER_KEY)
    over_kafka = SpendLedgerCallback(
        transport="kafka", settings=stack.ledger.settings, api_url=stack.api.url, key=MASTER_KEY
    )
    calls: list[Call] = []
    try:
        litellm.callbacks = [over_http]
        calls += make_calls(over_http, 0, 6)
        assert over_http.flush()
        litellm.logging_callback_manager._reset_all_callbacks()
        litellm.callbacks = [over_kafka]
        calls += make_calls(over_kafka, 6, 4)
        assert over_kafka.flush()
    finally:
        over_http.close()
        over_kafka.close()
    assert (over_http.published, over_kafka.published) == (6, 4)
    assert not over_http.dropped
    assert not over_kafka.dropped

    entries = entries_by_event_id(stack, {call.event_id for call in calls})
    differences = []
    for call in calls:
        entry = entries[call.event_id]
        assert entry["cost_source"] == "price_book"
        assert set(entry["scope_keys"]) == call.scope_keys
        difference = abs(nanos_to_usd(entry["cost_nanos"]) - Decimal(repr(call.response_cost)))
        assert difference <= ONE_NANO_USD, (entry["model"], entry["cost_nanos"], call.response_cost)
        differences.append(difference)
    print(f"max |ledger - litellm| over {len(calls)} calls: {max(differences)} USD")
    charged_nanos = sum(entry["cost_nanos"] for entry in entries.values())
    assert current_cost_nanos() == charged_nanos  # the process total counts what the worker charged

    # The api's store holds them too: every call carries the tag "litellm".
    def litellm_tag(report: SpendReport) -> SpendRow | None:
        return next((row for row in report.rows if row.groups == {"tag": "litellm"}), None)

    row = litellm_tag(
        until(
            lambda: stack.client.spend(["tag"], scope="tag:litellm"),
            lambda report: (row := litellm_tag(report)) is not None and row.entry_count >= len(calls),
            "the store to project every entry",
            timeout_s=WAIT_S,
        )
    )
    assert row is not None
    assert (row.entry_count, row.spend_nanos) == (len(calls), charged_nanos)


def test_a_team_over_budget_is_refused_before_its_next_call_is_made(stack: Stack) -> None:
    team = unique("team-over")
    written = stack.client.set_budget("team", team, max_budget="0.000001")  # 1,000 nanos
    assert written.applied
    callback = SpendLedgerCallback(api_url=stack.api.url, key=MASTER_KEY)
    provider = ProviderCalls()
    litellm.callbacks = [callback, provider]
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "metadata": {"user_api_key_team_id": team}}
    try:
        litellm.completion(**request, mock_response="within budget")  # 13,500 nanos: over from here on
        assert callback.flush()
        until(
            lambda: stack.client.check(team=team),
            lambda answer: not answer.allowed,
            "the team to be over",
            timeout_s=WAIT_S,
        )
        calls_before = provider.count

        with pytest.raises(BudgetExceededError) as refused:
            run_async(litellm.acompletion(**request, mock_response="must not happen"))
        assert refused.value.scope == f"team:{team}"
        assert refused.value.max_budget_nanos == 1_000
        assert refused.value.message.startswith("Budget has been exceeded! Current cost: ")
        with pytest.raises(BudgetExceededError):  # sync calls: LiteLLM has no hook that can refuse
            callback.check_call(**request)
        key = UserAPIKeyAuth(api_key="sk-team-over-key", team_id=team)
        with pytest.raises(BudgetExceededError) as on_proxy:
            run_async(callback.async_pre_call_hook(key, DualCache(), {"model": "gpt-4o-mini"}, "completion"))
        assert getattr(on_proxy.value, "status_code", None) == 400

        assert provider.count == calls_before  # the refused call never reached the provider
        assert callback.flush()
        assert callback.published == 1
        # Another team is not held back by this one.
        other = {**request, "metadata": {"user_api_key_team_id": unique("team-fine")}}
        run_async(litellm.acompletion(**other, mock_response="fine"))
        assert provider.count == calls_before + 1
    finally:
        callback.close()
