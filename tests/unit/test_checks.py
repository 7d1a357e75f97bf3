"""The budget check of a would-be call: every scope it names, windows rolled to now."""

from datetime import UTC, datetime, timedelta

import pytest

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.checks import TAGS_PER_CHECK_MAX, call_scopes, check
from ledger.domain.fold import Charge, apply_batch, apply_command, new_state
from ledger.domain.scopes import InvalidScope

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def budgeted(scope: str, *specs: BudgetSpec) -> BudgetState:
    command = BudgetCommand(command_id=f"c-{scope}", scope_key=scope, action="upsert", issued_at=T0, budgets=specs)
    state, _ = apply_command(new_state(scope), command)
    return state


def spent(state: BudgetState, cost_nanos: int, *, model: str = "gpt-4o", at: datetime = T0) -> BudgetState:
    state, _ = apply_batch(state, [Charge(f"e{cost_nanos}{model}", at + timedelta(seconds=1), model, cost_nanos)])
    return state


def test_call_scopes_name_global_first_then_the_event_order():
    assert call_scopes(user="alice", team="ml", key="sk-1", end_user="c-9", tags=["prod", "prod", "eu"]) == (
        "global:*",
        "user:alice",
        "team:ml",
        "key:sk-1",
        "end_user:c-9",
        "tag:prod",
        "tag:eu",
    )


def test_call_scopes_refuse_bad_ids_and_too_many_tags():
    with pytest.raises(InvalidScope):
        call_scopes(team=" padded ")
    with pytest.raises(ValueError, match="at most"):
        call_scopes(tags=[f"t{i}" for i in range(TAGS_PER_CHECK_MAX + 1)])


def test_team_over_budget_refuses_with_litellms_message():
    team = spent(budgeted("team:ml", BudgetSpec(max_budget_nanos=1, duration="1d")), 75_000)
    result = check({"team:ml": team}, call_scopes(team="ml"), "gpt-4o", T0 + timedelta(minutes=1))
    assert not result.allowed
    assert result.refused_by is not None
    assert result.refused_by.scope_key == "team:ml"
    assert result.message() == "Budget has been exceeded! Current cost: 0.000075, Max budget: 0.000000001"


def test_spend_equal_to_max_is_still_allowed():
    team = spent(budgeted("team:ml", BudgetSpec(max_budget_nanos=100, duration="1d")), 100)
    result = check({"team:ml": team}, call_scopes(team="ml"), "gpt-4o", T0 + timedelta(minutes=1))
    assert result.allowed
    assert result.scopes[1].remaining_nanos == 0


def test_an_ended_window_no_longer_refuses_even_before_the_worker_ticks():
    team = spent(budgeted("team:ml", BudgetSpec(max_budget_nanos=1, duration="1h")), 5_000)
    assert not check({"team:ml": team}, ["team:ml"], None, T0 + timedelta(minutes=30)).allowed
    later = check({"team:ml": team}, ["team:ml"], None, T0 + timedelta(hours=1, seconds=1))
    assert later.allowed
    assert later.scopes[0].binding is not None
    assert later.scopes[0].binding.spend_nanos == 0


def test_a_per_model_limit_refuses_only_its_model():
    specs = (
        BudgetSpec(max_budget_nanos=10**9, duration="1d"),
        BudgetSpec(max_budget_nanos=10, duration="1d", model="gpt-4o"),
    )
    team = spent(budgeted("key:sk-1", *specs), 1_000, model="gpt-4o")
    assert not check({"key:sk-1": team}, ["key:sk-1"], "gpt-4o", T0 + timedelta(minutes=1)).allowed
    other = check({"key:sk-1": team}, ["key:sk-1"], "gpt-4o-mini", T0 + timedelta(minutes=1))
    assert other.allowed
    assert [limit.spec.limit_name for limit in other.scopes[0].applicable] == ["1d"]


def test_unknown_scopes_have_no_limits_and_never_refuse():
    result = check({}, call_scopes(user="nobody"), "gpt-4o", T0)
    assert result.allowed
    assert [scope.remaining_nanos for scope in result.scopes] == [None, None]


def test_binding_limit_is_the_one_with_least_room():
    specs = (
        BudgetSpec(max_budget_nanos=1_000, duration="1d"),
        BudgetSpec(max_budget_nanos=300, duration="1h", name="hourly"),
    )
    user = spent(budgeted("user:alice", *specs), 200)
    result = check({"user:alice": user}, ["user:alice"], None, T0 + timedelta(minutes=5))
    assert result.scopes[0].remaining_nanos == 100
    assert result.scopes[0].binding is not None
    assert result.scopes[0].binding.spec.limit_name == "hourly"
