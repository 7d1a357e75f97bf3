"""``ledger.guard`` against a real stack: a scope over budget refuses, one within allows."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

import ledger
from ledger.client import LedgerClient


def test_guard_refuses_a_scope_over_budget_and_allows_the_rest(
    admin: httpx.Client, stack_url: str, stack_key: str
) -> None:
    team = f"guard-{uuid.uuid4().hex[:8]}"
    assert admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 0}).status_code == 200
    usage = {"event_id": f"{team}-1", "model": "gpt-4o-mini", "team_id": team, "usage": {"prompt_tokens": 10}}
    assert admin.post("/v1/usage", json=usage).status_code == 202

    with LedgerClient(stack_url, stack_key) as client:
        ledger.guard(team=f"{team}-other", user=f"{team}-user", client=client)
        # The charge reaches the worker within a moment: wait for it through check itself.
        deadline = time.monotonic() + 30
        while client.check(team=team).allowed and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ledger.BudgetExceededError) as raised:
            ledger.guard(team=team, user=f"{team}-user", model="gpt-4o-mini", client=client)

    assert raised.value.scope == f"team:{team}"
    assert raised.value.max_budget_nanos == 0
    assert raised.value.current_cost_nanos > 0
    assert str(raised.value).startswith("Budget has been exceeded! Current cost: ")
