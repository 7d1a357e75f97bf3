"""The replay's pure parts: limit histories from commands, price intervals from a book,
the equality check's differences."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from ledger.domain.budgets import BudgetCommand
from ledger.domain.fold import Charge, apply_batch, apply_command, new_state
from ledger.domain.prices import MatchRule, ModelPrices, PriceBook, PricePeriod, ProviderPrices, TokenRates
from ledger.replay.compare import compare_states
from ledger.replay.rates import FOREVER_US, price_intervals
from ledger.replay.timeline import scope_history

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)


def command(number: int, at: datetime, action: str = "upsert", **fields: object) -> BudgetCommand:
    return BudgetCommand.model_validate(
        {"command_id": f"c{number}", "scope_key": "team:t", "action": action, "issued_at": at, **fields}
    )


def test_a_changed_limit_keeps_its_series_and_a_reset_starts_a_new_one() -> None:
    daily = {"name": "d", "duration": "1d", "max_budget_nanos": 100}
    state, segments = scope_history(
        [
            command(1, T0, budgets=[daily]),
            command(2, T0 + timedelta(hours=2), budgets=[{**daily, "max_budget_nanos": 50}]),
            command(3, T0 + timedelta(hours=5), "reset"),
            command(4, T0 + timedelta(hours=6), "delete"),
        ]
    )
    assert state.limits == ()
    spans = [(s.series, s.starts_at - T0, None if s.ends_at is None else s.ends_at - T0, s.checks_at_start)
             for s in segments]  # fmt: skip
    assert spans == [
        (1, timedelta(0), timedelta(hours=2), False),
        (1, timedelta(hours=2), timedelta(hours=5), True),  # same windows, new limit checked at once
        (2, timedelta(hours=5), timedelta(hours=6), False),  # the reset opened a new series
    ]
    assert [s.spec.max_budget_nanos for s in segments] == [100, 50, 50]


def test_a_model_with_an_off_peak_period_gets_an_interval_per_change() -> None:
    model = ModelPrices(
        model_id="m",
        match=MatchRule(equals="m"),
        periods=(
            PricePeriod(rates=TokenRates(input_mtok=Decimal(2))),
            PricePeriod(utc_time_from=time(22), utc_time_to=time(6), rates=TokenRates(input_mtok=Decimal(1))),
            PricePeriod(starts_on=date(2026, 1, 6), rates=TokenRates(input_mtok=Decimal(3))),
        ),
    )
    book = PriceBook(source="t", providers=(ProviderPrices(provider_id="p", models=(model,)),))
    first = datetime(2026, 1, 5, 12, tzinfo=UTC)
    table = price_intervals(book, [("m", None, first, first + timedelta(days=2)), ("gone", None, first, first)])
    rows = table.to_pylist()
    assert {row["model"] for row in rows} == {"m"}  # an unpriced reference has no interval
    spans = sorted({(row["start_us"], row["input_units"]) for row in rows})  # rows repeat per UTC day
    hours = [(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start) - first) / timedelta(hours=1)
             for start, _ in spans]  # fmt: skip
    assert hours == [0, 10, 12]  # 12:00 standard, 22:00 off-peak, midnight of the 6th: the new price for good
    assert [int(units) // 10**18 for _, units in spans] == [2, 1, 3]
    assert max(row["end_us"] for row in rows) == FOREVER_US
    assert sorted({row["utc_day"] for row in rows}) == [20458, 20459, 20460]  # the 5th, 6th and 7th


def test_the_equality_check_names_each_differing_field() -> None:
    budget = command(1, T0, budgets=[{"name": "d", "duration": "1d", "max_budget_nanos": 100}])
    configured, _ = apply_command(new_state("team:t"), budget)
    live, _ = apply_batch(configured, [Charge("e1", T0 + timedelta(hours=1), "m", 150)])
    replayed, _ = apply_batch(configured, [Charge("e1", T0 + timedelta(hours=1), "m", 90)])
    as_of = T0 + timedelta(hours=2)
    assert compare_states({"team:t": live}, {"team:t": live}, as_of) == []
    differences = {d.field: d for d in compare_states({"team:t": live}, {"team:t": replayed}, as_of)}
    assert set(differences) == {"total_spend_nanos", "limit d spend_nanos", "limit d crossings"}
    assert differences["limit d spend_nanos"].delta_nanos == -60
    assert differences["limit d crossings"].live == frozenset({("exceeded", 100)})
    # a scope only one side knows is compared with a scope nothing happened to
    only_replayed = compare_states({}, {"team:t": replayed}, as_of)
    assert {d.field for d in only_replayed} == {"total_spend_nanos", "last_occurred_at", "limit d"}
