"""The fold: apply(state, entry) -> (state, alerts), the one place budget state changes."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.events import TokenUsage
from ledger.domain.fold import advance, alert_id, apply, apply_batch, apply_command, charge, new_state
from ledger.domain.money import usd_to_nanos
from ledger.domain.pricing import LedgerEntry

T0 = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
TEAM = "team:ml"


def entry(n: int, at: datetime, cost_nanos: int, *, model: str = "gpt-4o", kind: str = "charge") -> LedgerEntry:
    return LedgerEntry(
        entry_id=f"e{n}",
        event_id=f"e{n}",
        kind=kind,
        occurred_at=at,
        model=model,
        scope_keys=("global:*", TEAM),
        cost_nanos=cost_nanos,
        cost_source="price_book",
        usage=TokenUsage(),
    )


def upsert(*specs: BudgetSpec, at: datetime = T0, command_id: str = "c1", scope: str = TEAM) -> BudgetCommand:
    return BudgetCommand(command_id=command_id, scope_key=scope, action="upsert", issued_at=at, budgets=specs)


def budgeted(*specs: BudgetSpec, at: datetime = T0) -> BudgetState:
    state, alerts = apply_command(new_state(TEAM), upsert(*specs, at=at))
    assert alerts == ()
    return state


def fold(state: BudgetState, entries):
    alerts = []
    for item in entries:
        state, new = apply(state, item)
        alerts.extend(new)
    return state, alerts


def test_second_event_exceeds_team_budget_once():
    # LiteLLM's team walkthrough: max_budget 1e-9 USD. The first call costs exactly one
    # nano (not over: exceeded means spend > max), the second crosses.
    state = budgeted(BudgetSpec(max_budget_nanos=usd_to_nanos("0.000000001"), duration="1d"))
    state, first = apply(state, entry(1, T0 + timedelta(seconds=1), 1))
    assert first == ()
    state, second = apply(state, entry(2, T0 + timedelta(seconds=2), 30_000))
    assert [a.kind for a in second] == ["exceeded"]
    assert second[0].message == "Budget has been exceeded! Current cost: 0.000030001, Max budget: 0.000000001"
    state, third = apply(state, entry(3, T0 + timedelta(seconds=3), 30_000))
    assert third == ()
    assert state.exceeded
    assert state.limits[0].remaining_nanos == 0


def test_soft_threshold_is_reached_at_equal_spend_and_alerted_once():
    state = budgeted(BudgetSpec(max_budget_nanos=100, soft_budget_nanos=50, duration="1d"))
    state, alerts = fold(state, [entry(1, T0, 50), entry(2, T0, 10)])
    assert [a.kind for a in alerts] == ["soft-threshold"]
    assert not state.exceeded


def test_a_window_rolls_over_when_an_event_arrives_after_its_end():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="1h"))
    state, alerts = fold(state, [entry(1, T0, 150), entry(2, T0 + timedelta(hours=1, minutes=5), 20)])
    assert [a.kind for a in alerts] == ["exceeded", "reset", "recovered"]
    limit = state.limits[0]
    assert (limit.window_start, limit.spend_nanos) == (T0 + timedelta(hours=1), 20)
    assert alerts[1].occurred_at == T0 + timedelta(hours=1)  # the window's end, whatever triggered it
    assert state.total_spend_nanos == 170


def test_a_late_event_counts_in_total_but_not_in_the_current_window():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="1h"))
    state, _ = fold(state, [entry(1, T0 + timedelta(hours=2), 10), entry(2, T0 + timedelta(minutes=30), 99)])
    assert state.limits[0].spend_nanos == 10
    assert state.total_spend_nanos == 109


def test_spend_before_a_budget_existed_does_not_count_in_its_window():
    state, _ = apply(new_state(TEAM), entry(1, T0, 500))
    state, alerts = apply_command(
        state, upsert(BudgetSpec(max_budget_nanos=100, duration="monthly"), at=T0 + timedelta(minutes=1))
    )
    assert alerts == ()
    assert state.limits[0].spend_nanos == 0
    assert state.total_spend_nanos == 500


def test_the_timer_resets_a_window_with_no_new_traffic():
    state = budgeted(BudgetSpec(max_budget_nanos=10, duration="1s"))
    state, _ = apply(state, entry(1, T0 + timedelta(milliseconds=200), 25))
    unchanged, nothing = advance(state, T0 + timedelta(milliseconds=900))
    assert unchanged is state
    assert nothing == ()
    state, alerts = advance(state, T0 + timedelta(seconds=3, milliseconds=10))
    assert [a.kind for a in alerts] == ["reset", "recovered"]
    assert state.limits[0].window_start == T0 + timedelta(seconds=3)
    assert state.limits[0].spend_nanos == 0


def test_an_empty_window_rolls_over_silently():
    state = budgeted(BudgetSpec(max_budget_nanos=10, duration="1s"))
    state, alerts = advance(state, T0 + timedelta(seconds=5))
    assert alerts == ()
    assert state.limits[0].window_start == T0 + timedelta(seconds=5)


def test_a_reset_command_opens_a_new_window_at_its_own_time_and_emits_recovered():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="monthly"))
    state, _ = apply(state, entry(1, T0 + timedelta(hours=1), 150))
    reset_at = T0 + timedelta(hours=2)
    state, alerts = apply_command(
        state, BudgetCommand(command_id="r1", scope_key=TEAM, action="reset", issued_at=reset_at)
    )
    assert [a.kind for a in alerts] == ["reset", "recovered"]
    limit = state.limits[0]
    assert (limit.anchor, limit.window_start, limit.spend_nanos) == (reset_at, reset_at, 0)
    assert limit.window_end == datetime(2025, 12, 1, tzinfo=UTC)


def test_a_reset_can_name_one_limit():
    state = budgeted(
        BudgetSpec(max_budget_nanos=100, duration="1d"), BudgetSpec(max_budget_nanos=1000, duration="monthly")
    )
    state, _ = apply(state, entry(1, T0, 50))
    state, _ = apply_command(
        state, BudgetCommand(command_id="r1", scope_key=TEAM, action="reset", issued_at=T0, limit_name="1d")
    )
    assert [limit.spend_nanos for limit in state.limits] == [0, 50]


def test_a_raised_limit_emits_recovered_and_a_lowered_one_exceeded():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="1d"))
    state, _ = apply(state, entry(1, T0, 150))
    state, raised = apply_command(state, upsert(BudgetSpec(max_budget_nanos=200, duration="1d"), command_id="c2"))
    assert [a.kind for a in raised] == ["recovered"]
    assert not state.exceeded
    assert state.limits[0].spend_nanos == 150
    state, lowered = apply_command(state, upsert(BudgetSpec(max_budget_nanos=120, duration="1d"), command_id="c3"))
    assert [a.kind for a in lowered] == ["exceeded"]
    assert lowered[0].threshold_nanos == 120


def test_changing_the_duration_opens_a_new_window_that_does_not_start_over_budget():
    state = budgeted(BudgetSpec(name="main", max_budget_nanos=100, duration="1d"))
    state, _ = apply(state, entry(1, T0, 150))
    changed_at = T0 + timedelta(hours=3)
    state, alerts = apply_command(
        state, upsert(BudgetSpec(name="main", max_budget_nanos=100, duration="monthly"), at=changed_at, command_id="c2")
    )
    assert [a.kind for a in alerts] == ["reset", "recovered"]
    assert (state.limits[0].window_start, state.limits[0].spend_nanos) == (changed_at, 0)
    assert not state.exceeded


def test_a_scope_is_over_when_any_of_its_limits_is():
    state = budgeted(
        BudgetSpec(max_budget_nanos=5, duration="1d"), BudgetSpec(max_budget_nanos=100, duration="monthly")
    )
    state, alerts = apply(state, entry(1, T0, 10))
    assert state.exceeded
    assert [(a.limit_name, a.kind) for a in alerts] == [("1d", "exceeded")]


def test_a_per_model_limit_counts_only_its_model():
    state = budgeted(BudgetSpec(max_budget_nanos=5, duration="1d", model="gpt-4o"))
    state, alerts = fold(state, [entry(1, T0, 100, model="claude-sonnet-4-5"), entry(2, T0, 4)])
    assert alerts == []
    assert state.limits[0].spend_nanos == 4
    assert state.limits[0].spec.limit_name == "model:gpt-4o:1d"
    state, alerts = apply(state, entry(3, T0, 2))
    assert state.exceeded_limits("gpt-4o")
    assert not state.exceeded_limits("claude-sonnet-4-5")


def test_a_negative_adjustment_below_the_limit_emits_recovered():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="1d"))
    state, _ = apply(state, entry(1, T0, 150))
    state, alerts = apply(state, entry(2, T0, -80, kind="adjustment"))
    assert [a.kind for a in alerts] == ["recovered"]
    assert state.limits[0].spend_nanos == 70


def test_delete_removes_the_limits_but_keeps_the_spend():
    state = budgeted(BudgetSpec(max_budget_nanos=100, duration="1d"))
    state, _ = apply(state, entry(1, T0, 150))
    state, alerts = apply_command(state, BudgetCommand(command_id="d", scope_key=TEAM, action="delete", issued_at=T0))
    assert (state.limits, alerts, state.total_spend_nanos) == ((), (), 150)


def test_an_entry_for_another_scope_is_a_bug_not_a_charge():
    with pytest.raises(ValueError, match="does not charge scope"):
        apply(new_state("team:other"), entry(1, T0, 1))


def test_charge_applies_an_entry_to_every_scope_it_names():
    states, _ = charge({}, [entry(1, T0, 7), entry(2, T0, 5)])
    assert {key: s.total_spend_nanos for key, s in states.items()} == {"global:*": 12, TEAM: 12}


def test_alert_ids_are_deterministic_per_scope_limit_window_kind_and_threshold():
    a = alert_id(TEAM, "1d", T0, "exceeded", 100)
    assert a == alert_id(TEAM, "1d", T0, "exceeded", 100)
    assert (
        len(
            {
                a,
                alert_id(TEAM, "1d", T0, "exceeded", 101),
                alert_id(TEAM, "1d", T0 + timedelta(days=1), "exceeded", 100),
            }
        )
        == 3
    )


# ---------------------------------------------------------------------------- properties

specs = st.lists(
    st.builds(
        BudgetSpec,
        max_budget_nanos=st.integers(0, 5_000),
        soft_budget_nanos=st.one_of(st.none(), st.integers(0, 5_000)),
        duration=st.sampled_from([None, "30s", "1m", "1h", "daily", "monthly"]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda spec: spec.limit_name,
)
entry_lists = st.lists(st.tuples(st.integers(0, 3 * 86_400), st.integers(0, 1_000)), min_size=1, max_size=40).map(
    lambda rows: [entry(i, T0 + timedelta(seconds=offset), cost) for i, (offset, cost) in enumerate(rows)]
)


def _time_ordered(entries):
    return sorted(entries, key=lambda e: e.occurred_at)


@settings(max_examples=200, deadline=None)
@given(specs, entry_lists, st.data())
def test_any_split_into_batches_gives_the_same_state_and_alerts(limit_specs, entries, data):
    start = budgeted(*limit_specs)
    one_by_one, alerts_one = fold(start, entries)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(entries) - 1)), max_size=5)))
    batched, alerts_batched = start, []
    for lo, hi in zip([0, *cuts], [*cuts, len(entries)], strict=True):
        batched, new = apply_batch(batched, entries[lo:hi])
        alerts_batched.extend(new)
    assert batched == one_by_one
    assert alerts_batched == alerts_one


@settings(max_examples=200, deadline=None)
@given(specs, entry_lists, st.randoms(use_true_random=False))
def test_any_order_gives_the_same_totals_and_current_windows_to_the_nano(limit_specs, entries, rnd):
    start = budgeted(*limit_specs)
    ordered, _ = fold(start, _time_ordered(entries))
    shuffled_entries = list(entries)
    rnd.shuffle(shuffled_entries)
    shuffled, _ = fold(start, shuffled_entries)
    assert shuffled.total_spend_nanos == ordered.total_spend_nanos == sum(e.cost_nanos for e in entries)
    for a, b in zip(shuffled.limits, ordered.limits, strict=True):
        assert (a.window_start, a.window_end, a.spend_nanos) == (b.window_start, b.window_end, b.spend_nanos)
        assert a.spend_nanos == sum(
            e.cost_nanos
            for e in entries
            if a.window_start <= e.occurred_at and (a.window_end is None or e.occurred_at < a.window_end)
        )


@settings(max_examples=200, deadline=None)
@given(specs, entry_lists, st.integers(0, 4 * 86_400))
def test_each_crossing_is_alerted_once_per_window(limit_specs, entries, tick_seconds):
    state = budgeted(*limit_specs)
    state, alerts = fold(state, _time_ordered(entries))
    state, more = advance(state, T0 + timedelta(seconds=tick_seconds))
    alerts.extend(more)
    identities = [a.alert_id for a in alerts]
    assert len(identities) == len(set(identities))
    crossings = [(a.limit_name, a.window_start, a.kind) for a in alerts if a.kind in ("exceeded", "soft-threshold")]
    assert len(crossings) == len(set(crossings))  # limits never change here, so one per window and kind
    for a in alerts:
        if a.kind == "exceeded":
            assert a.spend_nanos > (a.max_budget_nanos or 0)
        if a.kind == "soft-threshold":
            assert a.spend_nanos >= (a.soft_budget_nanos or 0)


@settings(max_examples=100, deadline=None)
@given(specs, entry_lists)
def test_every_window_whose_spend_passed_the_limit_was_alerted(limit_specs, entries):
    state = budgeted(*limit_specs)
    ordered = _time_ordered(entries)
    state, alerts = fold(state, ordered)
    for limit in state.limits:
        spec = limit.spec
        in_window = sum(
            e.cost_nanos
            for e in ordered
            if limit.window_start <= e.occurred_at and (limit.window_end is None or e.occurred_at < limit.window_end)
        )
        assert limit.spend_nanos == in_window
        exceeded_here = any(
            a.kind == "exceeded" and a.limit_name == spec.limit_name and a.window_start == limit.window_start
            for a in alerts
        )
        assert exceeded_here == (spec.max_budget_nanos is not None and in_window > spec.max_budget_nanos)
