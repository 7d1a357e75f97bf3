"""The typed spend queries, against real DuckDB stores built through the writer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import orjson
import pytest

from ledger.domain.budgets import BudgetSpec
from ledger.store.queries import (
    GROUP_BY_NAMES,
    InvalidSpendQuery,
    SpendFilters,
    budget_statuses,
    dead_letter_summary,
    spend_by,
    spend_by_model,
    spend_by_scope,
    spend_by_time,
    top_spenders,
)
from ledger.store.records import StoreRows, usage_rows
from ledger.store.schema import open_store
from ledger.store.writer import append
from tests.stores import lake_at
from tests.unit.store_rows import at, build_store, command, dead_letter, entry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Four charges and one adjustment across two users, two teams and three tags."""
    path = build_store(
        lake_at(tmp_path),
        entries=[
            entry(1_000_000_001, "user:alice", "team:ml", "key:sk:a1", "tag:prod", "tag:eu", model="gpt-4o"),
            entry(250_000_000, "user:alice", "team:ml", model="gpt-4o-mini", occurred_at=at(10, 15)),
            entry(3, "user:bob", "team:web", "end_user:cust-7", "tag:prod", model="gpt-4o", occurred_at=at(11)),
            entry(40, "user:carol", model="claude-sonnet-4", occurred_at=at(9, 59, day=4), prompt=7, completion=2),
            entry(-1, "user:alice", "team:ml", kind="adjustment", occurred_at=at(12), prompt=100, completion=10),
        ],
    )
    connection = open_store(path, read_only=True)
    yield connection
    connection.close()


def groups_and_nanos(report) -> list[tuple[tuple, int]]:
    return [(tuple(row.groups.values()), row.spend_nanos) for row in report.rows]


def test_spend_by_user_and_model_sums_exact_nanos_for_each_pair(store):
    report = spend_by(store, ["user", "model"])
    assert groups_and_nanos(report) == [
        (("alice", "gpt-4o"), 1_000_000_000),  # 1_000_000_001 charged, then an adjustment of -1
        (("alice", "gpt-4o-mini"), 250_000_000),
        (("bob", "gpt-4o"), 3),
        (("carol", "claude-sonnet-4"), 40),
    ]
    assert report.rows[0].groups == {"user": "alice", "model": "gpt-4o"}
    assert not report.truncated


def test_an_entry_with_two_tags_counts_once_under_each_tag(store):
    rows = spend_by(store, ["tag"]).rows
    assert [(row.groups["tag"], row.spend_nanos, row.entry_count) for row in rows] == [
        ("eu", 1_000_000_001, 1),
        ("prod", 1_000_000_004, 2),
        (None, 249_999_999 + 40, 3),  # the entries that carry no tag, the adjustment among them
    ]


def test_entries_naming_no_scope_of_a_kind_are_grouped_under_none(store):
    rows = spend_by(store, ["team"]).rows
    assert [(row.groups["team"], row.spend_nanos) for row in rows] == [
        ("ml", 1_250_000_000),
        ("web", 3),
        (None, 40),
    ]
    assert sum(row.spend_nanos for row in rows) == 1_250_000_043


def test_adjustments_count_in_spend_and_entries_but_not_in_tokens(store):
    (alice,) = [row for row in spend_by(store, ["user"]).rows if row.groups["user"] == "alice"]
    assert alice.spend_nanos == 1_250_000_000
    assert alice.entry_count == 3
    assert (alice.prompt_tokens, alice.completion_tokens) == (200, 20)


def test_no_group_by_gives_one_total_row_even_for_an_empty_store(store, tmp_path):
    (total,) = spend_by(store, []).rows
    assert (total.groups, total.spend_nanos, total.entry_count) == ({}, 1_250_000_043, 5)
    with open_store(build_store(lake_at(tmp_path / "empty")), read_only=True) as empty:
        (nothing,) = spend_by(empty, []).rows
    assert (nothing.spend_nanos, nothing.entry_count, nothing.prompt_tokens) == (0, 0, 0)


def test_range_includes_from_and_excludes_to(store):
    report = spend_by(store, ["user"], start=at(10, 15), end=at(12))
    assert groups_and_nanos(report) == [(("alice",), 250_000_000), (("bob",), 3)]
    assert (report.start, report.end) == (at(10, 15), at(12))


def test_range_bounds_in_other_time_zones_mean_the_same_instants(store):
    paris = timezone(timedelta(hours=1))
    report = spend_by(store, [], start=datetime(2025, 11, 3, 11, 15, tzinfo=paris), end=at(12))
    assert report.rows[0].spend_nanos == 250_000_003


def test_time_buckets_are_utc_hours_days_and_months(store):
    assert groups_and_nanos(spend_by_time(store, "hour")) == [
        ((at(9),), 1_000_000_001),
        ((at(10),), 250_000_000),
        ((at(11),), 3),
        ((at(12),), -1),
        ((at(9, day=4),), 40),
    ]
    assert groups_and_nanos(spend_by_time(store, "day")) == [
        ((at(0),), 1_250_000_003),
        ((at(0, day=4),), 40),
    ]
    (month,) = spend_by_time(store, "month").rows
    assert month.groups == {"month": datetime(2025, 11, 1, tzinfo=UTC)}
    assert month.spend_nanos == 1_250_000_043


def test_a_bucket_follows_utc_not_the_time_zone_the_event_was_reported_in(tmp_path):
    late_in_new_york = datetime(2025, 11, 3, 22, 30, tzinfo=timezone(timedelta(hours=-5)))  # 03:30 UTC on the 4th
    path = build_store(lake_at(tmp_path), entries=[entry(5, "user:u", occurred_at=late_in_new_york)])
    with open_store(path, read_only=True) as connection:
        connection.execute("SET TimeZone = 'America/New_York'")
        assert groups_and_nanos(spend_by(connection, ["day"])) == [((datetime(2025, 11, 4, tzinfo=UTC),), 5)]


def test_scope_filter_keeps_only_entries_charged_to_that_scope(store):
    report = spend_by(store, ["model"], scope_key="tag:prod")
    assert groups_and_nanos(report) == [(("gpt-4o",), 1_000_000_004)]


def test_spend_by_model_sums_every_model(store):
    assert groups_and_nanos(spend_by_model(store)) == [
        (("claude-sonnet-4",), 40),
        (("gpt-4o",), 1_000_000_003),
        (("gpt-4o-mini",), 250_000_000),
    ]


def test_spend_by_scope_lists_every_scope_key_or_totals_one(store):
    every = dict((row.groups["scope"], row.spend_nanos) for row in spend_by_scope(store).rows)
    assert every == {
        "global:*": 1_250_000_043,
        "user:alice": 1_250_000_000,
        "user:bob": 3,
        "user:carol": 40,
        "team:ml": 1_250_000_000,
        "team:web": 3,
        "key:sk:a1": 1_000_000_001,
        "end_user:cust-7": 3,
        "tag:prod": 1_000_000_004,
        "tag:eu": 1_000_000_001,
    }
    (team,) = spend_by_scope(store, "team:ml").rows
    assert (team.groups, team.spend_nanos, team.entry_count) == ({"scope": "team:ml"}, 1_250_000_000, 3)
    (nobody,) = spend_by_scope(store, "user:nobody").rows
    assert (nobody.spend_nanos, nobody.entry_count) == (0, 0)


def test_a_scope_id_may_contain_colons(store):
    assert groups_and_nanos(spend_by(store, ["key"])) == [(("sk:a1",), 1_000_000_001), ((None,), 250_000_042)]


def test_end_user_groups_by_the_end_user_id(store):
    assert groups_and_nanos(spend_by(store, ["end_user"])) == [(("cust-7",), 3), ((None,), 1_250_000_040)]


def test_limit_truncates_the_rows_and_says_so(store):
    report = spend_by(store, ["user"], limit=2)
    assert groups_and_nanos(report) == [(("alice",), 1_250_000_000), (("bob",), 3)]
    assert report.truncated
    assert not spend_by(store, ["user"], limit=3).truncated


def test_unknown_group_by_is_refused_listing_the_accepted_names(store):
    with pytest.raises(InvalidSpendQuery) as refused:
        spend_by(store, ["user", "weekday"])
    assert str(refused.value) == f"cannot group by 'weekday'; accepted: {', '.join(GROUP_BY_NAMES)}"
    assert (
        *("scope", "user", "team", "key", "end_user", "tag", "model", "model_group", "hour", "day", "month"),
    ) == GROUP_BY_NAMES
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"group_by": ["user", "user"]}, "group_by names a group twice: user, user"),
        ({"start": at(10), "end": at(10)}, "'from' (2025-11-03T10:00:00+00:00) must be before 'to'"),
        ({"start": at(11), "end": at(10)}, "'from' (2025-11-03T11:00:00+00:00) must be before 'to'"),
        ({"start": datetime(2025, 11, 3)}, "'from' time 2025-11-03T00:00:00 has no time zone"),
        ({"scope_key": "org:acme"}, "unknown scope kind 'org'"),
        ({"limit": 0}, "limit must be between 1 and 10000, got 0"),
    ],
)
def test_invalid_spend_queries_are_refused_with_what_to_fix(store, arguments, message):
    with pytest.raises(InvalidSpendQuery, match=re.escape(message)):
        spend_by(store, **{"group_by": ["user"], **arguments})


def test_spend_by_time_accepts_only_hour_day_and_month(store):
    with pytest.raises(InvalidSpendQuery, match="unknown time bucket 'week'; expected one of: hour, day, month"):
        spend_by_time(store, "week")


def test_top_spenders_are_ordered_by_spend_and_stop_at_the_limit(store):
    top = top_spenders(store, "user", limit=2)
    assert [(spender.scope_key, spender.spend_nanos, spender.entry_count) for spender in top] == [
        ("user:alice", 1_250_000_000, 3),
        ("user:carol", 40, 1),
    ]
    assert [(s.scope_key, s.spend_nanos) for s in top_spenders(store, "tag")] == [
        ("tag:prod", 1_000_000_004),
        ("tag:eu", 1_000_000_001),
    ]


def test_top_spenders_count_only_the_range(store):
    top = top_spenders(store, "team", start=at(10), end=at(12))
    assert [(s.scope_key, s.spend_nanos, s.prompt_tokens) for s in top] == [
        ("team:ml", 250_000_000, 100),
        ("team:web", 3, 100),
    ]


def test_top_spenders_break_ties_by_scope_key(tmp_path):
    path = build_store(lake_at(tmp_path), entries=[entry(9, "team:b"), entry(9, "team:a"), entry(1, "team:c")])
    with open_store(path, read_only=True) as connection:
        assert [s.scope_key for s in top_spenders(connection, "team")] == ["team:a", "team:b", "team:c"]


def test_top_spenders_refuse_an_unknown_kind_and_the_global_scope(store):
    for kind in ("global", "org"):
        with pytest.raises(InvalidSpendQuery, match=f"unknown scope kind '{kind}'; expected one of: user, team, key"):
            top_spenders(store, kind)
    with pytest.raises(InvalidSpendQuery, match="limit must be between 1 and 1000, got 1001"):
        top_spenders(store, "user", limit=1001)


def test_the_latest_upsert_by_issued_at_decides_a_scopes_limits(tmp_path):
    daily = BudgetSpec(max_budget_nanos=5_000, duration="1d")
    monthly = BudgetSpec(max_budget_nanos=90_000, soft_budget_nanos=80_000, duration="monthly")
    path = build_store(
        lake_at(tmp_path),
        entries=[
            entry(700, "team:ml", occurred_at=at(7)),
            entry(20, "team:ml", occurred_at=at(9)),
            entry(-3, "team:ml", occurred_at=at(9, 30), kind="adjustment"),
            entry(11, "team:web", occurred_at=at(9)),
        ],
        commands=[  # stored out of issued_at order: the newer upsert arrived first
            command("team:ml", "upsert", at(8), daily, monthly, alias="Machine learning"),
            command("team:ml", "upsert", at(6), daily),
        ],
    )
    with open_store(path, read_only=True) as connection:
        report = budget_statuses(connection)
    (status,) = report.statuses
    assert status.scope_key == "team:ml"
    assert status.alias == "Machine learning"
    assert status.limits == (daily, monthly)
    assert status.configured_at == at(8)
    assert (status.last_command_action, status.last_command_at) == ("upsert", at(8))
    assert status.total_spend_nanos == 717
    assert status.spend_since_last_command_nanos == 17
    assert not report.truncated


def test_a_reset_after_the_upsert_moves_the_since_time_and_a_delete_removes_the_scope(tmp_path):
    cap = BudgetSpec(max_budget_nanos=1_000)
    path = build_store(
        lake_at(tmp_path),
        entries=[entry(100, "user:a", "user:b", occurred_at=at(9)), entry(5, "user:a", occurred_at=at(11))],
        commands=[
            command("user:a", "upsert", at(8), cap),
            command("user:a", "reset", at(7)),  # before the upsert: superseded by it
            command("user:a", "reset", at(10)),
            command("user:b", "upsert", at(8), cap),
            command("user:b", "delete", at(9, 30)),
            command("user:c", "delete", at(7)),
            command("user:c", "upsert", at(8), cap),
        ],
    )
    with open_store(path, read_only=True) as connection:
        statuses = budget_statuses(connection).statuses
        only_c = budget_statuses(connection, "user:c").statuses
    assert [(s.scope_key, s.last_command_action, s.last_command_at) for s in statuses] == [
        ("user:a", "reset", at(10)),
        ("user:c", "upsert", at(8)),
    ]
    assert [(s.total_spend_nanos, s.spend_since_last_command_nanos) for s in statuses] == [(105, 5), (0, 0)]
    assert [s.scope_key for s in only_c] == ["user:c"]


def test_a_set_overall_replaces_the_overall_limit_and_keeps_the_others(tmp_path):
    daily = BudgetSpec(max_budget_nanos=5_000, duration="1d")
    per_model = BudgetSpec(max_budget_nanos=900, duration="1d", model="gpt-4o")
    raised = BudgetSpec(max_budget_nanos=8_000, duration="1d")
    path = build_store(
        lake_at(tmp_path),
        entries=[],
        commands=[
            command("user:u", "upsert", at(8), daily, per_model),
            command("user:u", "set_overall", at(9), raised),  # LiteLLM's save of total_budget
        ],
    )
    with open_store(path, read_only=True) as connection:
        (status,) = budget_statuses(connection).statuses
    assert status.limits == (raised, per_model)
    assert (status.configured_at, status.last_command_action) == (at(9), "set_overall")


def test_budget_statuses_truncate_at_the_limit(tmp_path):
    cap = BudgetSpec(max_budget_nanos=1)
    path = build_store(lake_at(tmp_path), commands=[command(f"user:u{n}", "upsert", at(8), cap) for n in range(3)])
    with open_store(path, read_only=True) as connection:
        report = budget_statuses(connection, limit=2)
    assert [s.scope_key for s in report.statuses] == ["user:u0", "user:u1"]
    assert report.truncated


def test_dead_letters_are_counted_by_topic_stage_and_reason_with_the_example_at_the_highest_offset(tmp_path):
    path = build_store(
        lake_at(tmp_path),
        dead_letters=[
            dead_letter("t.usage", "price", "unpriced", "no price for model 'b'", "e-3", offset=12),
            dead_letter("t.usage", "validate", "invalid_usage", "prompt_tokens < 0", "e-2", offset=11),
            dead_letter("t.usage", "price", "unpriced", "no price for model 'a'", "e-1", offset=10),
            dead_letter("t.budget-commands", "validate", "invalid_command", "bad scope", offset=0),
        ],
    )
    with open_store(path, read_only=True) as connection:
        summary = dead_letter_summary(connection)
    assert [(g.source_topic, g.stage, g.reason, g.count, g.example_detail, g.example_event_id) for g in summary] == [
        ("t.usage", "price", "unpriced", 2, "no price for model 'b'", "e-3"),
        ("t.budget-commands", "validate", "invalid_command", 1, "bad scope", None),
        ("t.usage", "validate", "invalid_usage", 1, "prompt_tokens < 0", "e-2"),
    ]


def test_spend_groups_by_the_model_group_its_usage_events_name(tmp_path):
    """A LiteLLM alias (team-gpt) over two priced models: spend by group, and by model."""
    charges = [entry(5, "team:ml"), entry(7, "team:ml", model="gpt-4o-mini"), entry(11, "team:ml")]
    adjustment = {**entry(-1, "team:ml", kind="adjustment"), "event_id": charges[0]["event_id"]}
    path = build_store(lake_at(tmp_path), entries=[*charges, adjustment])
    events = [
        {"event_id": charge["event_id"], "occurred_at": at(9).isoformat(), "model": charge["model"],
         "model_group": group, "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
        for charge, group in zip(charges, ["team-gpt", "team-gpt", None], strict=True)
    ]  # fmt: skip
    rows = StoreRows()
    rows.tables["usage_events"].extend(
        usage_rows(orjson.dumps({"batch_id": "b", "events": events}), 0, 1, lambda text: 0)
    )
    connection = open_store(path)
    try:
        append(connection, rows, {})
        assert groups_and_nanos(spend_by(connection, ["model_group", "model"])) == [
            (("team-gpt", "gpt-4o"), 4),  # 5 charged, then an adjustment of -1
            (("team-gpt", "gpt-4o-mini"), 7),
            ((None, "gpt-4o"), 11),  # an event that named no group
        ]
        assert groups_and_nanos(spend_by(connection, ["model_group"])) == [(("team-gpt",), 11), ((None,), 11)]
    finally:
        connection.close()


# -- windows in a time zone, filters, tokens -------------------------------------------

NEW_YORK = "America/New_York"
EDT, EST = timezone(timedelta(hours=-4)), timezone(timedelta(hours=-5))
FALL_BACK_DAY_START = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 2026-11-01T00:00-04:00


@pytest.fixture
def fall_back_day(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """One charge of 1 nano at half past each hour of 2026-11-01 in New York (clocks fall
    back at 02:00 EDT to 01:00 EST), plus 1,000 nanos a minute before that day and 1,000,000
    nanos at the first instant of the next."""
    instants = [FALL_BACK_DAY_START + timedelta(minutes=30) + timedelta(hours=n) for n in range(25)]
    path = build_store(
        lake_at(tmp_path),
        entries=[
            entry(1_000, "user:u", occurred_at=FALL_BACK_DAY_START - timedelta(minutes=1)),
            *(entry(1, "user:u", occurred_at=instant) for instant in instants),
            entry(1_000_000, "user:u", occurred_at=datetime(2026, 11, 2, 0, 0, tzinfo=EST)),
        ],
    )
    connection = open_store(path, read_only=True)
    yield connection
    connection.close()


def windows(report) -> list[tuple[datetime | None, datetime | None, int]]:
    return [(row.window_start, row.window_end, row.spend_nanos) for row in report.rows]


def test_a_new_york_day_across_the_november_change_has_25_hourly_windows(fall_back_day):
    day_end = datetime(2026, 11, 2, 0, 0, tzinfo=EST)
    report = spend_by(fall_back_day, [], window="hour", time_zone=NEW_YORK, start=FALL_BACK_DAY_START, end=day_end)
    assert len(report.rows) == 25
    assert sum(row.spend_nanos for row in report.rows) == 25
    starts = [row.window_start.isoformat() for row in report.rows]
    assert starts[:4] == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",  # the hour the change repeats is a window of its own
        "2026-11-01T02:00:00-05:00",
    ]
    assert starts[-1] == "2026-11-01T23:00:00-05:00"
    for row, following in zip(report.rows, report.rows[1:], strict=False):
        assert row.window_end - row.window_start == timedelta(hours=1)
        assert row.window_end == following.window_start
    assert report.rows[-1].window_end == day_end
    assert (report.window, report.time_zone) == ("hour", NEW_YORK)


def test_the_fall_back_day_window_runs_from_midnight_edt_to_midnight_est_and_holds_25_hours(fall_back_day):
    report = spend_by(fall_back_day, [], window="day", time_zone=NEW_YORK)
    assert windows(report) == [
        (datetime(2026, 10, 31, 0, 0, tzinfo=EDT), datetime(2026, 11, 1, 0, 0, tzinfo=EDT), 1_000),
        (datetime(2026, 11, 1, 0, 0, tzinfo=EDT), datetime(2026, 11, 2, 0, 0, tzinfo=EST), 25),
        (datetime(2026, 11, 2, 0, 0, tzinfo=EST), datetime(2026, 11, 3, 0, 0, tzinfo=EST), 1_000_000),
    ]
    day = report.rows[1]
    assert (day.window_start.isoformat(), day.window_end.isoformat()) == (
        "2026-11-01T00:00:00-04:00",
        "2026-11-02T00:00:00-05:00",
    )
    assert day.window_end - day.window_start == timedelta(hours=25)
    assert day.entry_count == 25


def test_week_windows_start_at_monday_midnight_and_month_windows_at_the_first_in_the_zone(fall_back_day):
    assert windows(spend_by(fall_back_day, [], window="week", time_zone=NEW_YORK)) == [
        (datetime(2026, 10, 26, 0, 0, tzinfo=EDT), datetime(2026, 11, 2, 0, 0, tzinfo=EST), 1_025),
        (datetime(2026, 11, 2, 0, 0, tzinfo=EST), datetime(2026, 11, 9, 0, 0, tzinfo=EST), 1_000_000),
    ]
    assert windows(spend_by(fall_back_day, [], window="month", time_zone=NEW_YORK)) == [
        (datetime(2026, 10, 1, 0, 0, tzinfo=EDT), datetime(2026, 11, 1, 0, 0, tzinfo=EDT), 1_000),
        (datetime(2026, 11, 1, 0, 0, tzinfo=EDT), datetime(2026, 12, 1, 0, 0, tzinfo=EST), 1_000_025),
    ]


def test_the_same_entries_in_utc_windows_split_at_utc_midnight(fall_back_day):
    report = spend_by(fall_back_day, [], window="day")
    assert windows(report) == [
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC), 1_000 + 20),  # 03:59Z, 04:30Z..23:30Z
        (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), 5 + 1_000_000),
    ]
    assert report.time_zone == "UTC"


def test_window_starts_are_given_in_the_zone_and_a_spring_forward_day_holds_23_hours(tmp_path):
    path = build_store(
        lake_at(tmp_path), entries=[entry(7, "user:u", occurred_at=datetime(2026, 3, 8, 12, tzinfo=UTC))]
    )
    with open_store(path, read_only=True) as connection:
        (day,) = spend_by(connection, [], window="day", time_zone=NEW_YORK).rows
    assert day.window_start.isoformat() == "2026-03-08T00:00:00-05:00"
    assert day.window_end.isoformat() == "2026-03-09T00:00:00-04:00"
    assert day.window_end - day.window_start == timedelta(hours=23)


def test_hour_windows_follow_a_half_hour_zone(tmp_path):
    path = build_store(
        lake_at(tmp_path), entries=[entry(7, "user:u", occurred_at=datetime(2026, 5, 1, 10, 10, tzinfo=UTC))]
    )
    with open_store(path, read_only=True) as connection:
        (hour,) = spend_by(connection, [], window="hour", time_zone="Asia/Kolkata").rows
    assert (hour.window_start.isoformat(), hour.window_end.isoformat()) == (
        "2026-05-01T15:00:00+05:30",
        "2026-05-01T16:00:00+05:30",
    )


def test_time_groups_follow_the_zone_too_and_windows_come_before_the_groups(fall_back_day):
    assert groups_and_nanos(spend_by(fall_back_day, ["day"], time_zone=NEW_YORK)) == [
        ((datetime(2026, 10, 31, tzinfo=EDT),), 1_000),
        ((datetime(2026, 11, 1, tzinfo=EDT),), 25),
        ((datetime(2026, 11, 2, tzinfo=EST),), 1_000_000),
    ]
    (first, *_) = spend_by(fall_back_day, ["user"], window="month", time_zone=NEW_YORK).rows
    assert (first.window_start, first.groups, first.spend_nanos) == (
        datetime(2026, 10, 1, tzinfo=EDT),
        {"user": "u"},
        1_000,
    )


def test_filters_keep_any_value_of_one_dimension_and_every_dimension_given(store):
    def total(**given: tuple[str, ...]) -> int:
        (row,) = spend_by(store, [], filters=SpendFilters(**given)).rows
        return row.spend_nanos

    assert total(user=("bob", "carol")) == 43
    assert total(team=("ml",), model=("gpt-4o",)) == 1_000_000_000  # the adjustment of -1 is on gpt-4o
    assert total(tag=("prod",), user=("bob",)) == 3
    assert total(key=("sk:a1",)) == 1_000_000_001
    assert total(end_user=("cust-7",), team=("ml",)) == 0
    assert total(model=("claude-sonnet-4", "gpt-4o-mini")) == 250_000_040
    assert total(team=("x') OR true --",)) == 0  # a bound value, never SQL
    grouped = spend_by(store, ["team"], filters=SpendFilters(tag=("prod",)), scope_key="user:alice")
    assert groups_and_nanos(grouped) == [(("ml",), 1_000_000_001)]


def test_every_row_counts_cache_and_reasoning_tokens_of_charges_only(tmp_path):
    charges = [entry(5, "team:ml", prompt=1_000, completion=300), entry(7, "team:web", prompt=50, completion=5)]
    adjustment = {**entry(-1, "team:ml", kind="adjustment"), "event_id": charges[0]["event_id"]}
    path = build_store(lake_at(tmp_path), entries=[*charges, adjustment])
    usages = [
        {"prompt_tokens": 1_000, "completion_tokens": 300, "cache_read_tokens": 600, "cache_write_tokens": 100,
         "reasoning_tokens": 200},
        {"prompt_tokens": 50, "completion_tokens": 5},
    ]  # fmt: skip
    events = [
        {"event_id": charge["event_id"], "occurred_at": at(9).isoformat(), "model": charge["model"], "usage": usage}
        for charge, usage in zip(charges, usages, strict=True)
    ]
    rows = StoreRows()
    rows.tables["usage_events"].extend(
        usage_rows(orjson.dumps({"batch_id": "b", "events": events}), 0, 1, lambda text: 0)
    )
    connection = open_store(path)
    try:
        append(connection, rows, {})
        ml, web = spend_by(connection, ["team"], window="day").rows
    finally:
        connection.close()
    assert (ml.groups, ml.spend_nanos, ml.entry_count) == ({"team": "ml"}, 4, 2)
    tokens = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    assert [getattr(ml, name) for name in tokens] == [1_000, 300, 600, 100, 200]
    assert [getattr(web, name) for name in tokens] == [50, 5, 0, 0, 0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window": "fortnight"}, "unknown window 'fortnight'; expected one of: hour, day, week, month"),
        ({"time_zone": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'; give an IANA name"),
        ({"time_zone": "../../etc/passwd"}, "unknown time zone '../../etc/passwd'"),
        ({"time_zone": ""}, "unknown time zone ''"),
        (
            {"filters": SpendFilters(team=tuple(f"t{n}" for n in range(101)))},
            "'team' takes at most 100 values, got 101",
        ),
        ({"filters": SpendFilters(model=("",))}, "'model' values must not be empty"),
    ],
)
def test_bad_windows_zones_and_filters_are_refused_naming_them(store, arguments, message):
    with pytest.raises(InvalidSpendQuery, match=re.escape(message)):
        spend_by(store, **{"group_by": ["user"], "window": "day", **arguments})
