"""The pure parts of ``ledger.admission``: the event that settles a hold, and the typed
errors of a refused admit. The context manager itself runs against a real api in
tests/integration/test_sdk_admission.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

import ledger
from ledger.client import BudgetRefused, RateLimited
from ledger.client.admission_calls import ScopeRoomInfo
from ledger.domain.errors import InvalidUsage
from ledger.domain.events import TokenUsage
from ledger.sdk.admission import AdmissionRequest, budget_error, rate_limit_error, settling_event

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REQUEST = AdmissionRequest(
    request_id="req-1", model="gpt-4o-mini", user="alice", team="ml", key="k1", end_user="acme", tags=("batch",)
)


class LiteLLMLikeResponse:
    """A response object as LiteLLM returns one: ``model_dump`` and ``_hidden_params``."""

    def __init__(self, usage: dict[str, Any] | None, response_cost: Any) -> None:
        self._dump = {"id": "chatcmpl-1", "model": "gpt-4o-mini-2024-07-18", "usage": usage}
        self._hidden_params = {"response_cost": response_cost}

    def model_dump(self) -> dict[str, Any]:
        return self._dump


def test_the_settling_event_carries_the_request_id_and_the_admissions_scopes() -> None:
    event = settling_event(REQUEST, usage={"prompt_tokens": 10, "completion_tokens": 20}, occurred_at=AT)
    assert event.event_id == "req-1"
    assert event.scope_keys() == ("global:*", "user:alice", "team:ml", "key:k1", "end_user:acme", "tag:batch")
    assert event.model == "gpt-4o-mini"
    assert event.usage == TokenUsage(prompt_tokens=10, completion_tokens=20)
    assert event.reported_cost is None


def test_a_litellm_response_gives_usage_and_its_cost_but_not_its_model() -> None:
    response = LiteLLMLikeResponse({"prompt_tokens": 7, "completion_tokens": 3}, 1.35e-05)
    event = settling_event(REQUEST, response, occurred_at=AT)
    assert event.usage == TokenUsage(prompt_tokens=7, completion_tokens=3)
    assert event.reported_cost == Decimal("0.0000135")
    assert event.model == "gpt-4o-mini"  # the admitted model: the hold's per-model room
    given = settling_event(REQUEST, response, cost="0.001", model="gpt-4o-mini-2024-07-18", occurred_at=AT)
    assert (given.reported_cost, given.model) == (Decimal("0.001"), "gpt-4o-mini-2024-07-18")


def test_a_cost_alone_settles_and_nothing_at_all_is_refused() -> None:
    assert settling_event(REQUEST, cost=Decimal("0.02"), occurred_at=AT).reported_cost == Decimal("0.02")
    with pytest.raises(TypeError, match="response, its usage, or its cost"):
        settling_event(REQUEST, occurred_at=AT)
    with pytest.raises(TypeError, match="not both"):
        settling_event(REQUEST, {"usage": {}}, usage=TokenUsage(), occurred_at=AT)
    with pytest.raises(InvalidUsage, match="no usage"):
        settling_event(REQUEST, LiteLLMLikeResponse(None, None), occurred_at=AT)


def test_a_402_becomes_the_sdks_budget_error_with_what_holds_reserve() -> None:
    rooms = [
        ScopeRoomInfo(scope_key="global:*"),
        ScopeRoomInfo(scope_key="team:ml", spend_nanos=30, held_nanos=60, max_budget_nanos=100),
    ]
    message = "Budget has been exceeded! Current cost: 0.00000009, Max budget: 0.0000001 (team:ml)"
    error = budget_error(BudgetRefused(message, "team:ml", rooms, {}))
    assert isinstance(error, ledger.BudgetExceededError)
    assert (error.scope, error.current_cost_nanos, error.max_budget_nanos) == ("team:ml", 90, 100)
    assert str(error) == message


def test_a_429_becomes_a_rate_limit_error_with_retry_after() -> None:
    message = "Key=k1 over available TPM=0. Model TPM=0, Active keys=2"
    error = rate_limit_error(RateLimited(message, 17, {"x-ratelimit-remaining-tokens": "0"}, {}), "req-1")
    assert isinstance(error, ledger.RateLimitExceededError)
    assert (str(error), error.retry_after_s, error.request_id) == (message, 17, "req-1")
    assert error.headers == {"x-ratelimit-remaining-tokens": "0"}


def test_admit_arguments_name_every_field_of_the_admit_call() -> None:
    arguments = REQUEST.admit_arguments()
    assert arguments["tags"] == ("batch",)
    assert set(arguments) == {
        "user",
        "team",
        "key",
        "end_user",
        "tags",
        "priority",
        "prompt_tokens",
        "messages",
        "max_tokens",
        "cost",
    }
