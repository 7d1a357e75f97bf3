"""The pure parts of the LiteLLM callback's admission: what a proxy request's estimate is
made of, and the errors it raises, which must be LiteLLM's own. The hook itself runs
against a real api in tests/integration/test_litellm_admission.py."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads: nothing is fetched

import litellm
from fastapi import HTTPException
from litellm.proxy._types import UserAPIKeyAuth

import ledger
from ledger.client import LedgerApiError, RateLimited
from ledger.integrations.litellm_requests import (
    ProxyBudgetExceededError,
    admission_max_tokens,
    admission_messages,
    deployment_models,
    key_priority,
    proxy_budget_error,
    proxy_rate_limit_error,
    proxy_unpriced_error,
)


def test_chat_messages_keep_only_role_and_text() -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
            "not a message",
        ]
    }
    assert admission_messages(data) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": ""},
    ]


def test_a_prompt_or_an_input_becomes_user_messages() -> None:
    assert admission_messages({"prompt": "Once upon"}) == [{"role": "user", "content": "Once upon"}]
    assert admission_messages({"input": ["a", "b"]}) == [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert admission_messages({"input": [[1, 2, 3]]}) is None  # token ids: the api's default estimate
    assert admission_messages({"model": "gpt-4o"}) is None


def test_the_reply_cap_is_max_tokens_else_max_completion_tokens() -> None:
    assert admission_max_tokens({"max_tokens": 30, "max_completion_tokens": 99}) == 30
    assert admission_max_tokens({"max_completion_tokens": 99}) == 99
    assert admission_max_tokens({"max_tokens": True}) is None
    assert admission_max_tokens({"max_tokens": -1}) is None
    assert admission_max_tokens({}) is None


def test_the_key_priority_is_where_litellms_rate_limiter_reads_it() -> None:
    assert key_priority(UserAPIKeyAuth(api_key="sk-a", metadata={"priority": "prod"})) == "prod"
    assert key_priority(UserAPIKeyAuth(api_key="sk-a")) is None


def test_a_proxy_budget_refusal_is_litellms_error_and_the_sdks() -> None:
    refused = ledger.BudgetExceededError(1_500, 1_000, scope="team:ml", message="Budget has been exceeded! ...")
    error = proxy_budget_error(refused)
    assert isinstance(error, litellm.BudgetExceededError)
    assert isinstance(error, ledger.BudgetExceededError)
    assert (error.current_cost_nanos, error.max_budget_nanos, error.scope) == (1_500, 1_000, "team:ml")
    assert (error.current_cost, error.max_budget) == (0.0000015, 0.000001)
    assert (error.status_code, error.type, error.message, str(error)) == (
        400,
        "budget_exceeded",
        refused.message,
        refused.message,
    )
    assert proxy_budget_error(error) is error
    assert isinstance(error, ProxyBudgetExceededError)


def test_a_rate_refusal_is_litellms_429_as_its_dynamic_rate_limiter_raises_it() -> None:
    message = "Key=abc over available RPM=0. Model RPM=100, Active keys=1"
    refused = RateLimited(message, 23, {"x-ratelimit-remaining-requests": "0"}, {})
    error = proxy_rate_limit_error(refused, "openai/gpt-4o")
    assert isinstance(error, HTTPException)
    assert isinstance(error, litellm.RateLimitError)
    assert (error.status_code, error.detail) == (429, {"error": message})
    assert error.headers == {"x-ratelimit-remaining-requests": "0", "retry-after": "23"}
    assert str(getattr(error, "rate_limit_type", "")).endswith("requests")


def test_a_groups_deployments_are_priced_as_their_base_model_else_their_model_without_provider() -> None:
    router = litellm.Router(
        model_list=[
            {"model_name": "team-gpt", "litellm_params": {"model": "openai/gpt-4o-mini"}},
            {
                "model_name": "team-gpt",
                "litellm_params": {"model": "azure/my-deployment", "api_base": "http://127.0.0.1:9", "api_key": "k"},
                "model_info": {"base_model": "azure/gpt-4o"},
            },
            {"model_name": "team-gpt", "litellm_params": {"model": "gpt-4o-mini"}},
            {"model_name": "other", "litellm_params": {"model": "gpt-4.1"}},
        ]
    )
    assert deployment_models(router, "team-gpt") == ("gpt-4o-mini", "gpt-4o")
    assert deployment_models(router, "unknown") == ()
    assert deployment_models(None, "team-gpt") == ()


def test_an_unpriced_call_is_refused_as_the_proxy_refuses_a_request_its_hooks_reject() -> None:
    from litellm.proxy._types import ProxyException

    message = "no price for model 'team-gpt'; set SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD"
    refused = proxy_unpriced_error(LedgerApiError(422, "unpriced_model", message))
    assert isinstance(refused, ProxyException)
    assert (refused.code, refused.type, refused.param, refused.message) == ("400", "unpriced_model", "model", message)
