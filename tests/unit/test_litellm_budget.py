"""LiteLLM's hosted BudgetManager (/get_budget, /set_budget) read as budget state and commands."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.events import TokenUsage
from ledger.domain.fold import apply, apply_command, new_state
from ledger.domain.pricing import LedgerEntry
from ledger.integrations.litellm_budget import (
    USERS_PER_DICT_MAX,
    InvalidBudgetDict,
    commands_from_user_dict,
    error_response,
    get_budget_response,
    set_budget_response,
    user_dict,
)

T0 = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
ALICE = "user:alice"


def budgeted(scope: str, *specs: BudgetSpec, at: datetime = T0) -> BudgetState:
    command = BudgetCommand(command_id=f"c-{scope}", scope_key=scope, action="upsert", issued_at=at, budgets=specs)
    state, _ = apply_command(new_state(scope), command)
    return state


def spent(state: BudgetState, n: int, at: datetime, cost_nanos: int, model: str = "gpt-4o") -> BudgetState:
    entry = LedgerEntry(
        entry_id=f"e{n}",
        event_id=f"e{n}",
        kind="charge",
        occurred_at=at,
        model=model,
        scope_keys=("global:*", state.scope_key),
        cost_nanos=cost_nanos,
        cost_source="price_book",
        usage=TokenUsage(),
    )
    state, _ = apply(state, entry)
    return state


def applied(states: dict[str, BudgetState], commands: list[BudgetCommand]) -> dict[str, BudgetState]:
    result = dict(states)
    for command in commands:
        result[command.scope_key], _ = apply_command(
            result.get(command.scope_key) or new_state(command.scope_key), command
        )
    return result


def over_the_wire(served: dict[str, Any]) -> dict[str, Any]:
    """What LiteLLM holds after load_data: the JSON of our reply, parsed."""
    loaded: dict[str, Any] = json.loads(json.dumps(served))
    return loaded


def post(
    posted: dict[str, Any], states: dict[str, BudgetState], now: datetime = T0, prefix: str = "req-1"
) -> list[BudgetCommand]:
    return commands_from_user_dict("proj", posted, states, now, prefix)


def daily_alice(max_nanos: int = 10_000_000_000) -> dict[str, BudgetState]:
    return {ALICE: budgeted(ALICE, BudgetSpec(max_budget_nanos=max_nanos, duration="daily"))}


# Round trip and shapes


@pytest.mark.parametrize(("litellm_duration", "days"), [("daily", 1), ("weekly", 7), ("monthly", 28), ("yearly", 365)])
def test_a_created_budget_round_trips_to_the_same_total_and_duration(litellm_duration, days):
    # LiteLLM's create_budget(total_budget=10, user="alice", duration=...) stores days.
    posted = {"alice": {"total_budget": 10, "duration": days, "created_at": 1.7e9, "last_updated_at": 1.7e9}}
    commands = post(posted, {})
    assert [(c.action, c.scope_key, c.issued_at) for c in commands] == [("set_overall", ALICE, T0)]
    assert commands[0].budgets == (BudgetSpec(max_budget_nanos=10_000_000_000, duration=litellm_duration),)
    served = user_dict(applied({}, commands), T0)
    assert served["alice"]["total_budget"] == 10.0
    assert served["alice"]["total_budget_nanos"] == 10_000_000_000
    assert served["alice"]["duration"] == days
    assert served["alice"]["duration_text"] == litellm_duration


def test_the_served_entry_has_litellm_fields_and_exact_companions():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0 + timedelta(minutes=5), 1_500_000_000)}
    served = user_dict(states, T0 + timedelta(hours=1))
    assert served == {
        "alice": {
            "total_budget": 10.0,
            "current_cost": 1.5,
            "model_cost": {},
            "duration": 1,
            "created_at": T0.timestamp(),
            "last_updated_at": T0.timestamp(),
            "total_budget_nanos": 10_000_000_000,
            "current_cost_nanos": 1_500_000_000,
            "model_cost_nanos": {},
            "duration_text": "daily",
        }
    }
    assert get_budget_response(served) == {"status": "success", "data": served}


def test_a_budget_without_duration_has_no_duration_key_as_in_litellm():
    commands = post({"alice": {"total_budget": 5}}, {})
    assert commands[0].budgets == (BudgetSpec(max_budget_nanos=5_000_000_000),)
    served = user_dict(applied({}, commands), T0)
    assert "duration" not in served["alice"]  # update_budget_all_users skips it, as LiteLLM's own
    assert served["alice"]["duration_text"] is None
    assert post(over_the_wire(served), applied({}, commands)) == []


def test_model_cost_shows_per_model_limits_window_spend():
    state = budgeted(
        ALICE,
        BudgetSpec(max_budget_nanos=10_000_000_000, duration="daily"),
        BudgetSpec(max_budget_nanos=2_000_000_000, duration="daily", model="gpt-4o"),
    )
    state = spent(state, 1, T0, 250_000_000, model="gpt-4o")
    state = spent(state, 2, T0, 100_000_000, model="claude-sonnet-4")
    served = user_dict({ALICE: state}, T0)["alice"]
    assert (served["current_cost"], served["model_cost"], served["model_cost_nanos"]) == (
        0.35,
        {"gpt-4o": 0.25},
        {"gpt-4o": 250_000_000},
    )


def test_only_user_scopes_with_an_overall_limit_are_served():
    states = {
        "team:ml": budgeted("team:ml", BudgetSpec(max_budget_nanos=1, duration="1d")),
        "user:bob": budgeted("user:bob", BudgetSpec(max_budget_nanos=1, duration="1d", model="gpt-4o")),
        "user:carol": budgeted("user:carol", BudgetSpec(soft_budget_nanos=1, duration="1d")),
        "user:dave": new_state("user:dave"),
        **daily_alice(),
    }
    assert list(user_dict(states, T0)) == ["alice"]


def test_a_window_that_ended_reports_current_cost_zero():
    state = spent(daily_alice()[ALICE], 1, T0 + timedelta(hours=1), 3_000_000_000)
    next_day = datetime(2025, 11, 4, 0, 0, tzinfo=UTC)
    served = user_dict({ALICE: state}, next_day + timedelta(hours=2))["alice"]
    assert (served["current_cost"], served["current_cost_nanos"]) == (0.0, 0)
    assert served["last_updated_at"] == next_day.timestamp()  # LiteLLM's "last reset"
    assert served["created_at"] == T0.timestamp()


def test_sub_day_durations_are_reported_as_fractions_of_a_day_and_read_back():
    commands = post({"alice": {"total_budget": 1, "duration": 0.5}}, {})
    assert commands[0].budgets[0].duration == "12h"
    hourly = post({"alice": {"total_budget": 1, "duration": 1 / 24}}, {})
    assert hourly[0].budgets[0].duration == "1h"
    states = applied({}, hourly)
    served = over_the_wire(user_dict(states, T0))
    assert served["alice"]["duration"] == 1 / 24
    served["alice"].pop("duration_text")
    assert post(served, states) == []


# What a post means


def test_the_dict_we_served_posted_back_yields_no_commands():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 1_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    assert post(loaded, states) == []
    # LiteLLM's update_cost adds to the costs it holds and saves: costs are ignored.
    loaded["alice"]["current_cost"] += 0.25
    loaded["alice"]["model_cost"] = {"gpt-4o": 0.25}
    assert post(loaded, states) == []


def test_a_recreated_budget_with_the_same_values_yields_no_commands():
    states = daily_alice()
    posted = {"alice": {"total_budget": 10.0, "duration": 1, "created_at": 1.8e9, "last_updated_at": 1.8e9}}
    assert post(posted, states) == []


def test_users_missing_from_the_post_are_not_deleted():
    states = {**daily_alice(), "user:bob": budgeted("user:bob", BudgetSpec(max_budget_nanos=1, duration="1d"))}
    assert post({}, states) == []
    only_alice = {"alice": over_the_wire(user_dict(states, T0))["alice"]}
    assert post(only_alice, states) == []


def test_a_total_edited_in_place_is_a_set_overall_that_keeps_the_window():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 4_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    loaded["alice"]["total_budget"] = 3.5  # total_budget_nanos still says 10: the client changed it
    commands = post(loaded, states, now=T0 + timedelta(minutes=1))
    assert [c.action for c in commands] == ["set_overall"]
    after = applied(states, commands)[ALICE]
    assert (after.limits[0].spec.max_budget_nanos, after.limits[0].spend_nanos) == (3_500_000_000, 4_000_000_000)
    assert after.limits[0].window_start == T0
    assert after.exceeded


def test_a_stale_echo_does_not_undo_another_managers_change():
    states = daily_alice()
    first_manager = over_the_wire(user_dict(states, T0))
    raised = post({"alice": {"total_budget": 20, "duration": 7}}, states)  # a second manager's create_budget
    states = applied(states, raised)
    assert user_dict(states, T0)["alice"]["total_budget"] == 20.0
    assert post(first_manager, states, prefix="req-2") == []


def test_a_changed_duration_replaces_only_the_overall_limit_and_keeps_its_settings():
    states = {
        ALICE: budgeted(
            ALICE,
            BudgetSpec(max_budget_nanos=10_000_000_000, soft_budget_nanos=8_000_000_000, duration="daily"),
            BudgetSpec(max_budget_nanos=1_000_000_000, duration="daily", model="gpt-4o"),
            BudgetSpec(name="cap", max_budget_nanos=100_000_000_000, duration="yearly"),
        )
    }
    commands = post({"alice": {"total_budget": 50, "duration": 7}}, states)
    assert [(c.action, c.budgets) for c in commands] == [
        (
            "set_overall",
            (BudgetSpec(max_budget_nanos=50_000_000_000, soft_budget_nanos=8_000_000_000, duration="weekly"),),
        )
    ]
    assert [limit.spec for limit in applied(states, commands)[ALICE].limits] == [
        BudgetSpec(max_budget_nanos=50_000_000_000, soft_budget_nanos=8_000_000_000, duration="weekly"),
        BudgetSpec(max_budget_nanos=1_000_000_000, duration="daily", model="gpt-4o"),
        BudgetSpec(name="cap", max_budget_nanos=100_000_000_000, duration="yearly"),
    ]


def test_a_save_built_from_a_stale_read_keeps_limits_added_since():
    # The api read alice with one limit; before its command is folded, an admin adds a
    # per-model limit and a yearly cap. The save replaces the overall limit and keeps both.
    read = daily_alice()
    commands = post({"alice": {"total_budget": 20, "duration": 1}}, read)
    admin = BudgetCommand(
        command_id="admin-1",
        scope_key=ALICE,
        action="upsert",
        issued_at=T0,
        budgets=(
            BudgetSpec(max_budget_nanos=10_000_000_000, duration="daily"),
            BudgetSpec(max_budget_nanos=1_000_000_000, duration="daily", model="gpt-4o"),
            BudgetSpec(name="cap", max_budget_nanos=100_000_000_000, duration="yearly"),
        ),
    )
    now_held = applied(read, [admin])
    assert [limit.spec for limit in applied(now_held, commands)[ALICE].limits] == [
        BudgetSpec(max_budget_nanos=20_000_000_000, duration="daily"),
        BudgetSpec(max_budget_nanos=1_000_000_000, duration="daily", model="gpt-4o"),
        BudgetSpec(name="cap", max_budget_nanos=100_000_000_000, duration="yearly"),
    ]


def test_an_overall_limit_whose_new_name_is_taken_gets_its_own():
    states = {
        ALICE: budgeted(
            ALICE,
            BudgetSpec(max_budget_nanos=5_000_000_000, duration="daily"),
            BudgetSpec(max_budget_nanos=100_000_000_000, duration="monthly"),
        )
    }
    commands = post({"alice": {"total_budget": 50, "duration": 28}}, states)
    assert [limit.spec.limit_name for limit in applied(states, commands)[ALICE].limits] == [
        "litellm:monthly",
        "monthly",
    ]
    served = user_dict(applied(states, commands), T0)["alice"]
    assert (served["total_budget"], served["duration_text"]) == (50.0, "monthly")


def test_a_custom_limit_name_is_kept_when_the_duration_changes():
    states = {ALICE: budgeted(ALICE, BudgetSpec(name="litellm", max_budget_nanos=1, duration="daily"))}
    commands = post({"alice": {"total_budget": 1e-9, "duration": 7}}, states)
    assert commands[0].budgets == (BudgetSpec(name="litellm", max_budget_nanos=1, duration="weekly"),)


def test_a_budget_deleted_since_the_client_loaded_it_is_not_revived():
    states = daily_alice()
    loaded = over_the_wire(user_dict(states, T0))
    deleted, _ = apply_command(
        states[ALICE], BudgetCommand(command_id="d1", scope_key=ALICE, action="delete", issued_at=T0)
    )
    assert post(loaded, {ALICE: deleted}) == []


# Resets


def litellm_reset_cost(entry: dict[str, Any]) -> None:
    entry["current_cost"] = 0
    entry["model_cost"] = {}


def test_reset_cost_after_spend_yields_a_reset():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 2_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0 + timedelta(minutes=5)))
    litellm_reset_cost(loaded["alice"])
    now = T0 + timedelta(minutes=10)
    commands = post(loaded, states, now=now)
    assert [(c.action, c.limit_name, c.issued_at) for c in commands] == [("reset", "daily", now)]
    after = applied(states, commands)[ALICE]
    assert (after.limits[0].spend_nanos, after.limits[0].window_start) == (0, now)


def test_reset_cost_resets_the_per_model_limits_litellm_shows_but_not_others():
    state = budgeted(
        ALICE,
        BudgetSpec(max_budget_nanos=10_000_000_000, duration="daily"),
        BudgetSpec(max_budget_nanos=1_000_000_000, duration="daily", model="gpt-4o"),
        BudgetSpec(name="cap", max_budget_nanos=100_000_000_000, duration="yearly"),
    )
    states = {ALICE: spent(state, 1, T0, 500_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    litellm_reset_cost(loaded["alice"])
    commands = post(loaded, states)
    assert [c.limit_name for c in commands] == ["daily", "model:gpt-4o:daily"]


def test_a_zero_we_served_does_not_reset_spend_that_came_later():
    states = daily_alice()
    loaded = over_the_wire(user_dict(states, T0))  # current_cost 0, nothing spent yet
    states = {ALICE: spent(states[ALICE], 1, T0 + timedelta(minutes=1), 2_000_000_000)}
    assert post(loaded, states, now=T0 + timedelta(minutes=2)) == []


def test_a_reset_posted_again_after_it_was_applied_resets_nothing_more():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 2_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    litellm_reset_cost(loaded["alice"])
    states = applied(states, post(loaded, states, now=T0 + timedelta(minutes=1)))
    states = {ALICE: spent(states[ALICE], 2, T0 + timedelta(minutes=2), 1_000_000_000)}
    # The client keeps its zeros and sends them with every later save.
    assert post(loaded, states, now=T0 + timedelta(minutes=3), prefix="req-2") == []


def test_litellms_own_duration_reset_is_left_to_our_windows():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 2_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    litellm_reset_cost(loaded["alice"])
    loaded["alice"]["last_updated_at"] = (T0 + timedelta(hours=1)).timestamp()  # reset_on_duration moves it
    assert post(loaded, states, now=T0 + timedelta(hours=1)) == []


def test_a_zero_from_a_window_that_already_ended_resets_nothing():
    states = {ALICE: spent(daily_alice()[ALICE], 1, T0, 2_000_000_000)}
    loaded = over_the_wire(user_dict(states, T0))
    litellm_reset_cost(loaded["alice"])
    next_day = datetime(2025, 11, 4, 1, 0, tzinfo=UTC)
    states = {ALICE: spent(states[ALICE], 2, next_day, 1_000_000_000)}
    assert post(loaded, states, now=next_day + timedelta(minutes=1)) == []


# Money


@pytest.mark.parametrize(
    ("total_budget", "nanos"),
    [
        (0.1, 100_000_000),
        (0.3, 300_000_000),
        (1e-9, 1),
        (0, 0),
        (10, 10_000_000_000),
        (123456.789, 123_456_789_000_000),
    ],
)
def test_total_budget_becomes_exact_nanos(total_budget, nanos):
    commands = post({"alice": {"total_budget": total_budget}}, {})
    assert commands[0].budgets[0].max_budget_nanos == nanos


def test_a_total_finer_than_a_nano_rounds_half_to_even():
    commands = post({"alice": {"total_budget": 10 / 3}}, {})
    assert commands[0].budgets[0].max_budget_nanos == 3_333_333_333


# Ids


def test_command_ids_are_deterministic_per_prefix_and_change():
    posted = {"alice": {"total_budget": 1, "duration": 1}, "bob": {"total_budget": 2}}
    first, retried = post(posted, {}), post(posted, {})
    assert [c.command_id for c in first] == [c.command_id for c in retried]
    assert len({c.command_id for c in first}) == 2
    assert all(c.command_id.startswith("req-1:set_overall:") for c in first)
    other_request = post(posted, {}, prefix="req-2")
    assert not {c.command_id for c in first} & {c.command_id for c in other_request}
    other_total = post({**posted, "alice": {"total_budget": 3, "duration": 1}}, {})
    assert other_total[0].command_id != first[0].command_id
    assert other_total[1].command_id == first[1].command_id


def test_an_unusable_id_prefix_is_refused():
    with pytest.raises(ValueError, match="id_prefix"):
        post({}, {}, prefix="")
    with pytest.raises(ValueError, match="id_prefix"):
        post({}, {}, prefix="x" * 151)


# Validation


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"total_budget": -1}, "total_budget"),
        ({"total_budget": float("nan")}, "total_budget"),
        ({"total_budget": float("inf")}, "total_budget"),
        ({"total_budget": True}, "total_budget"),
        ({"total_budget": "10"}, "total_budget"),
        ({"total_budget": None}, "total_budget"),
        ({}, "total_budget"),
        ({"total_budget": 2e12}, "total_budget"),
        ({"total_budget": 1, "duration": "fortnightly"}, "duration"),
        ({"total_budget": 1, "duration": 0}, "duration"),
        ({"total_budget": 1, "duration": -7}, "duration"),
        ({"total_budget": 1, "duration": True}, "duration"),
        ({"total_budget": 1, "duration": 1 / 7}, "duration"),
        ({"total_budget": 1, "duration": 4000}, "duration"),
        ({"total_budget": 1, "duration": float("nan")}, "duration"),
        ({"total_budget": 1, "duration": [1]}, "duration"),
        ({"total_budget": 1, "model_cost": 3}, "model_cost"),
        ({"total_budget": 1, "current_cost": "free"}, "current_cost"),
        ({"total_budget": 1, "last_updated_at": float("inf")}, "last_updated_at"),
        ({"total_budget": 1, "total_budget_nanos": 1.5}, "total_budget_nanos"),
        ({"total_budget": 1, "duration_text": "soon"}, "duration_text"),
    ],
)
def test_an_unreadable_field_is_refused_naming_the_user_and_field(entry, field):
    with pytest.raises(InvalidBudgetDict, match=f"user 'alice' {field}: ") as caught:
        post({"alice": entry}, {})
    assert (caught.value.user, caught.value.field) == ("alice", field)


@pytest.mark.parametrize("entry", [10, [10], "10", None])
def test_a_user_entry_that_is_not_an_object_is_refused(entry):
    with pytest.raises(InvalidBudgetDict, match="user 'alice': must be an object"):
        post({"alice": entry}, {})


@pytest.mark.parametrize("user", ["", " alice", "a\nb", "x" * 257])
def test_a_user_id_that_is_not_a_scope_id_is_refused(user):
    with pytest.raises(InvalidBudgetDict, match="user id") as caught:
        post({user: {"total_budget": 1}}, {})
    assert caught.value.user == user


def test_more_users_than_the_limit_are_refused_and_the_limit_itself_is_accepted():
    at_limit = {f"u{i}": {"total_budget": 1} for i in range(USERS_PER_DICT_MAX)}
    assert len(post(at_limit, {})) == USERS_PER_DICT_MAX
    with pytest.raises(InvalidBudgetDict, match="user_dict: has 10001 users"):
        post({**at_limit, "one-more": {"total_budget": 1}}, {})


def test_a_user_dict_or_project_name_of_the_wrong_type_is_refused():
    with pytest.raises(InvalidBudgetDict, match="user_dict"):
        commands_from_user_dict("proj", [], {}, T0, "req")  # type: ignore[arg-type]
    with pytest.raises(InvalidBudgetDict, match="project_name"):
        commands_from_user_dict("", {}, {}, T0, "req")


def test_one_bad_user_refuses_the_whole_post():
    with pytest.raises(InvalidBudgetDict, match="user 'zed'"):
        post({"alice": {"total_budget": 1}, "zed": {"total_budget": -1}}, {})


# Responses


def test_set_budget_and_error_responses_have_litellms_status():
    commands = post({"alice": {"total_budget": 1}}, {})
    assert set_budget_response(len(commands)) == {
        "status": "success",
        "message": "1 budget command(s) accepted",
        "commands": 1,
    }
    assert error_response("user 'alice' total_budget: must be a number") == {
        "status": "error",
        "message": "user 'alice' total_budget: must be a number",
    }
