"""The process-wide budget (``ledger.max_budget``, ``current_cost``) and the SDK's exports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

import ledger
from ledger.client import CheckAnswer
from ledger.sdk.guard import error_from_check


@pytest.fixture(autouse=True)
def fresh_process_budget() -> Iterator[None]:
    ledger.reset_current_cost()
    ledger.max_budget = None
    yield
    ledger.reset_current_cost()
    ledger.max_budget = None


def test_no_max_budget_never_refuses() -> None:
    ledger.record_cost(1_000)
    ledger.guard()


def test_over_max_budget_refuses_with_litellm_message() -> None:
    ledger.max_budget = 0.001
    ledger.record_cost(0.0006)
    ledger.record_cost(0.0004)
    ledger.guard()  # 0.001 is not over 0.001: LiteLLM refuses only beyond it
    ledger.record_cost(cost_nanos=1)

    with pytest.raises(ledger.BudgetExceededError) as raised:
        ledger.guard()

    assert raised.value.current_cost_nanos == 1_000_001
    assert raised.value.max_budget_nanos == 1_000_000
    assert raised.value.scope is None
    assert str(raised.value) == "Budget has been exceeded! Current cost: 0.001000001, Max budget: 0.001"


def test_current_cost_sums_exactly() -> None:
    for _ in range(10):
        ledger.record_cost(0.1)
    assert ledger.current_cost_nanos() == 1_000_000_000
    assert ledger.current_cost() == 1.0
    ledger.record_cost(Decimal("0.000000001"))
    assert ledger.current_cost_nanos() == 1_000_000_001


def test_bad_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ledger.record_cost(-1)
    with pytest.raises(TypeError, match="exactly one"):
        ledger.record_cost()
    ledger.max_budget = "lots"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="lots"):
        ledger.guard()


def test_a_refused_check_names_the_scope_and_its_amounts() -> None:
    answer = CheckAnswer.model_validate(
        {
            "allowed": False,
            "scope": "team:ml",
            "message": "Budget has been exceeded! Current cost: 2, Max budget: 1",
            "scopes": [
                {"scope_key": "user:a", "spend_nanos": 5},
                {"scope_key": "team:ml", "spend_nanos": 2_000_000_000, "max_budget_nanos": 1_000_000_000},
            ],
        }
    )
    error = error_from_check(answer)
    assert (error.scope, error.current_cost, error.max_budget) == ("team:ml", 2.0, 1.0)
    assert str(error) == "Budget has been exceeded! Current cost: 2, Max budget: 1"


def test_every_exported_name_imports() -> None:
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None or name == "max_budget"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ledger.nope  # noqa: B018


def test_importing_the_domain_does_not_load_the_sdk() -> None:
    code = (
        "import sys, ledger.domain.fold\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ledger.sdk', 'aiokafka', 'litellm'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
