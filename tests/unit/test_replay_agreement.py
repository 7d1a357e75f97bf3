"""The SQL replay against the event-time fold: random events, commands and price books
must give the same state on every scope and the same crossings in every window, to the
nano."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.domain.budgets import BudgetCommand, BudgetState
from ledger.domain.events import UsageEvent
from ledger.domain.prices import (
    MatchRule,
    ModelPrices,
    PriceBook,
    PriceOverride,
    PricePeriod,
    ProviderPrices,
    Tier,
    TieredRate,
    TokenRates,
)
from ledger.replay import sql
from ledger.replay.engine import ReplayOptions, load_crossings, replay
from ledger.replay.reference import CROSSING_KINDS, fold_in_event_time
from ledger.store.records import StoreRows, command_row, usage_rows
from ledger.store.schema import TABLES_SQL
from ledger.store.writer import append

BASE = datetime(2025, 12, 30, 21, tzinfo=UTC)  # crosses a day, a month, a year and a book period
SPAN_S = 4 * 86_400


def words(text: str) -> int:
    return len(text.split())


def rates(input_usd: str, output_usd: str, **more: Any) -> TokenRates:
    return TokenRates(input_mtok=Decimal(input_usd), output_mtok=Decimal(output_usd), **more)


BOOK = PriceBook(
    source="replay-test",
    providers=(
        ProviderPrices(
            provider_id="acme",
            model_match=MatchRule(starts_with="acme-"),
            models=(
                ModelPrices(
                    model_id="acme-large",
                    match=MatchRule(equals="acme-large"),
                    periods=(
                        PricePeriod(
                            rates=rates(
                                "2.5",
                                "10",
                                cache_read_mtok=Decimal("1.25"),
                                cache_write_mtok=Decimal("3.125"),
                                reasoning_mtok=Decimal("12.000000000000000001"),
                            )
                        ),
                        PricePeriod(starts_on=date(2026, 1, 1), rates=rates("2", "8")),
                    ),
                ),
                ModelPrices(
                    model_id="acme-long",
                    match=MatchRule(equals="acme-long"),
                    periods=(
                        PricePeriod(
                            rates=TokenRates(
                                input_mtok=TieredRate(
                                    base=Decimal("1.25"),
                                    tiers=(
                                        Tier(start=1_000, price=Decimal("2.5")),
                                        Tier(start=5_000, price=Decimal(3)),
                                    ),
                                ),
                                output_mtok=TieredRate(base=Decimal(10), tiers=(Tier(start=1_000, price=Decimal(15)),)),
                                request_usd=Decimal("0.0000000015"),
                            )
                        ),
                    ),
                ),
                ModelPrices(
                    model_id="acme-offpeak",
                    match=MatchRule(equals="acme-offpeak"),
                    periods=(
                        PricePeriod(rates=rates("1", "1")),
                        PricePeriod(utc_time_from=time(16, 30), utc_time_to=time(0, 30), rates=rates("0.5", "0.5")),
                        PricePeriod(
                            starts_on=date(2026, 1, 2),
                            utc_time_from=time(2),
                            utc_time_to=time(3),
                            rates=rates("0.1", "0.3"),
                        ),
                    ),
                ),
                ModelPrices(
                    model_id="acme-free",
                    match=MatchRule(equals="acme-free"),
                    periods=(PricePeriod(rates=rates("0", "0")),),
                ),
                ModelPrices(
                    model_id="acme-image",
                    match=MatchRule(equals="acme-image"),
                    periods=(PricePeriod(rates=TokenRates()),),
                ),
                ModelPrices(  # half a nano a token in, half a nano and a yocto-dollar out
                    model_id="acme-half",
                    match=MatchRule(equals="acme-half"),
                    periods=(PricePeriod(rates=rates("0.0005", "0.000500000000000001")),),
                ),
            ),
        ),
    ),
    overrides=(PriceOverride(model="private-7b", rates=rates("0.333333333333333333", "0.7")),),
)
MODELS = ["acme-large", "acme-long", "acme-offpeak", "acme-free", "acme-image", "private-7b", "unknown-model"]
DURATIONS = [None, "30s", "1m", "1h", "1d", "daily", "weekly", "monthly", "yearly"]
ZONES = ["UTC", "America/Sao_Paulo", "Asia/Kolkata", "America/Havana"]
SCOPES = ["global:*", "user:a", "user:b", "team:x", "tag:p"]

moments = st.integers(0, SPAN_S // 60).map(lambda minutes: BASE + timedelta(minutes=minutes)) | st.integers(
    0, SPAN_S
).map(lambda seconds: BASE + timedelta(seconds=seconds))


@st.composite
def usage_events(draw: st.DrawFn, number: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"e{draw(st.integers(0, number + 3))}",  # some ids repeat
        "occurred_at": draw(moments).isoformat(),
        "model": draw(st.sampled_from(MODELS)),
        "user_id": draw(st.sampled_from(["a", "b"])),
    }
    if (team := draw(st.sampled_from([None, "x", "y"]))) is not None:
        event["team_id"] = team
    if tags := draw(st.lists(st.sampled_from(["p", "q"]), unique=True, max_size=2)):
        event["tags"] = tags
    shape = draw(st.sampled_from(["usage", "usage", "usage", "text", "reported", "usage+reported"]))
    if shape == "text":
        event["input_text"] = " ".join(["word"] * draw(st.integers(0, 50)))
        event["output_text"] = "some words here"
        return event
    if shape in ("reported", "usage+reported"):
        event["reported_cost"] = str(Decimal(draw(st.integers(0, 10**8))).scaleb(-9))
        if shape == "reported":
            return event
    prompt = draw(st.integers(0, 8_000))
    completion = draw(st.integers(0, 4_000))
    cache_read = draw(st.integers(0, prompt))
    event["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": draw(st.integers(0, prompt - cache_read)),
        "reasoning_tokens": draw(st.integers(0, completion)),
    }
    return event


@st.composite
def budget_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"duration": draw(st.sampled_from(DURATIONS))}
    limit = draw(st.none() | st.integers(0, 60_000_000))
    soft = draw(st.none() | st.integers(0, 40_000_000))
    if limit is None and soft is None:
        limit = 10_000_000
    if limit is not None:
        spec["max_budget_nanos"] = limit
    if soft is not None:
        spec["soft_budget_nanos"] = soft
    if draw(st.booleans()):
        spec["timezone"] = draw(st.sampled_from(ZONES))
        spec["week_start"] = draw(st.integers(0, 6))
    if draw(st.integers(0, 4)) == 0:
        spec["model"] = draw(st.sampled_from(MODELS[:3]))
    return spec


@st.composite
def budget_commands(draw: st.DrawFn, number: int) -> dict[str, Any]:
    action = draw(st.sampled_from(["upsert", "upsert", "upsert", "set_overall", "reset", "delete"]))
    command: dict[str, Any] = {
        "command_id": f"c{number}",
        "scope_key": draw(st.sampled_from(SCOPES)),
        "action": action,
        "issued_at": draw(moments).isoformat(),
    }
    if action == "upsert":
        specs = draw(st.lists(budget_specs(), min_size=1, max_size=3))
        for index, spec in enumerate(specs):  # names unique within a scope
            spec["name"] = draw(st.sampled_from([f"limit-{index}", spec.get("duration") or "total"]))
        names = [spec["name"] for spec in specs]
        if len(set(names)) != len(names):
            for index, spec in enumerate(specs):
                spec["name"] = f"limit-{index}"
        command["budgets"] = specs
        if draw(st.booleans()):
            command["alias"] = f"alias-{number}"
    elif action == "set_overall":  # LiteLLM's save: one overall limit, the rest kept
        spec = draw(budget_specs())
        spec.pop("model", None)
        spec.setdefault("max_budget_nanos", 10_000_000)
        spec["name"] = draw(st.sampled_from(["limit-0", spec.get("duration") or "total"]))
        command["budgets"] = [spec]
    elif action == "reset" and draw(st.booleans()):
        command["limit_name"] = draw(st.sampled_from(["limit-0", "limit-1", "daily", "1h"]))
    return command


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], datetime, bool]:
    events = [draw(usage_events(n)) for n in range(draw(st.integers(0, 40)))]
    commands = [draw(budget_commands(n)) for n in range(draw(st.integers(0, 12)))]
    as_of = BASE + timedelta(seconds=draw(st.integers(SPAN_S // 2, SPAN_S + 86_400)))
    return events, commands, as_of, draw(st.booleans())


def store_of(events: list[dict[str, Any]], commands: list[dict[str, Any]]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(TABLES_SQL)
    connection.execute("SET TimeZone = 'UTC'")
    rows = StoreRows()
    for offset, event in enumerate(events):
        rows.tables["usage_events"].extend(usage_rows(orjson.dumps(event), 0, offset, words))
    for offset, command in enumerate(commands):
        row = command_row(orjson.dumps(command), 0, offset)
        assert row is not None
        rows.tables["budget_commands"].append(row)
    append(connection, rows, {})
    return connection


def comparable(state: BudgetState) -> tuple[Any, ...]:
    limits = tuple(
        (
            limit.spec,
            limit.anchor,
            limit.window_start,
            limit.window_end,
            limit.spend_nanos,
            frozenset(crossed for crossed in limit.alerted if crossed[0] in CROSSING_KINDS),
        )
        for limit in state.limits
    )
    return (state.alias, state.total_spend_nanos, state.entry_count, state.last_occurred_at, limits)


def assert_replays_agree(
    events: list[dict[str, Any]], commands: list[dict[str, Any]], as_of: datetime, trust: bool
) -> None:
    connection = store_of(events, commands)
    result = replay(connection, ReplayOptions(book=BOOK, as_of=as_of, trust_reported_cost=trust))
    expected_states, expected_crossings = fold_in_event_time(
        [UsageEvent.model_validate(event) for event in events],
        [BudgetCommand.model_validate(command) for command in commands],
        BOOK,
        as_of,
        count_tokens=words,
        trust_reported_cost=trust,
    )
    assert load_crossings(connection) == expected_crossings
    assert result.crossing_count == len(expected_crossings)
    assert set(result.states) == set(expected_states)
    for scope, state in expected_states.items():
        assert comparable(result.states[scope]) == comparable(state), scope


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_sql_replay_agrees_with_the_event_time_fold(
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]], datetime, bool],
) -> None:
    assert_replays_agree(*scenario)


def test_a_changed_limit_is_checked_when_the_command_lands() -> None:
    at = BASE + timedelta(hours=1)
    events = [
        {
            "event_id": f"e{n}",
            "occurred_at": (at + timedelta(minutes=n)).isoformat(),
            "model": "acme-large",
            "user_id": "a",
            "usage": {"prompt_tokens": 1_000},
        }
        for n in range(3)
    ]  # 2,500,000 nanos each
    budgets = [{"duration": "1d", "max_budget_nanos": 100_000_000}]
    lowered = [{"duration": "1d", "max_budget_nanos": 6_000_000, "soft_budget_nanos": 1}]
    commands = [
        {
            "command_id": "c1",
            "scope_key": "user:a",
            "action": "upsert",
            "issued_at": BASE.isoformat(),
            "budgets": budgets,
        },
        {
            "command_id": "c2",
            "scope_key": "user:a",
            "action": "upsert",
            "issued_at": (at + timedelta(minutes=2, seconds=30)).isoformat(),
            "budgets": lowered,
        },
    ]
    connection = store_of(events, commands)
    result = replay(connection, ReplayOptions(book=BOOK, as_of=at + timedelta(hours=1)))
    (limit,) = result.states["user:a"].limits
    assert limit.spend_nanos == 7_500_000
    assert set(limit.alerted) == {("soft-threshold", 1), ("exceeded", 6_000_000)}
    assert_replays_agree(events, commands, at + timedelta(hours=1), False)


def test_an_upsert_checks_a_kept_limit_even_unchanged_or_opened_at_the_same_instant() -> None:
    at = (BASE + timedelta(minutes=1)).isoformat()
    event = {
        "event_id": "e0",
        "occurred_at": BASE.isoformat(),
        "model": "acme-large",
        "user_id": "a",
        "usage": {"prompt_tokens": 0},
    }
    soft_zero = [{"name": "total", "soft_budget_nanos": 0, "model": "acme-large"}]
    commands = [
        {"command_id": "c0", "scope_key": "global:*", "action": "upsert", "issued_at": at,
         "budgets": [{"name": "total", "max_budget_nanos": 10, "model": "acme-large"}]},
        {"command_id": "c1", "scope_key": "global:*", "action": "upsert", "issued_at": at, "budgets": soft_zero},
        {"command_id": "c2", "scope_key": "user:a", "action": "upsert", "issued_at": at, "budgets": soft_zero},
        {"command_id": "c3", "scope_key": "user:a", "action": "upsert", "issued_at": at, "budgets": soft_zero},
    ]  # fmt: skip
    assert_replays_agree([event], commands, BASE + timedelta(days=1), False)
    connection = store_of([event], commands)
    replay(connection, ReplayOptions(book=BOOK, as_of=BASE + timedelta(days=1)))
    assert {(c.scope_key, c.kind) for c in load_crossings(connection)} == {
        ("global:*", "soft-threshold"),
        ("user:a", "soft-threshold"),
    }


def test_each_event_is_rounded_half_to_even_to_the_nano() -> None:
    usage = [{"prompt_tokens": 1}, {"prompt_tokens": 3}, {"prompt_tokens": 5}, {"completion_tokens": 1}]
    events = [
        {"event_id": f"e{n}", "occurred_at": BASE.isoformat(), "model": "acme-half", "user_id": "a", "usage": tokens}
        for n, tokens in enumerate(usage)
    ]  # 0.5, 1.5, 2.5 and 0.5 + 1e-15 nanos
    result = replay(store_of(events, []), ReplayOptions(book=BOOK, as_of=BASE + timedelta(days=1)))
    assert result.states["user:a"].total_spend_nanos == 0 + 2 + 2 + 1
    assert_replays_agree(events, [], BASE + timedelta(days=1), False)


def test_a_code_two_names_share_stops_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql, "NAMES", sql.NAMES.replace("hash(name)", "hash(name) % 1"))  # every name one code
    events = [
        {"event_id": f"e{n}", "occurred_at": BASE.isoformat(), "model": "acme-large", "user_id": user, "usage": {}}
        for n, user in enumerate(["a", "b"])
    ]
    with pytest.raises(AssertionError, match="share a 64-bit code"):
        replay(store_of(events, []), ReplayOptions(book=BOOK, as_of=BASE + timedelta(days=1)))
