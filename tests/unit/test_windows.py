"""Durations and event-time windows: fixed ones repeat from the anchor, calendar ones
follow the calendar of the budget's time zone."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.errors import InvalidBudget
from ledger.domain.windows import parse_duration, window_containing

ANCHOR = datetime(2025, 1, 31, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds", "calendar"),
    [
        ("30s", 30, None),
        ("1m", 60, None),
        ("1h", 3600, None),
        ("1d", 86400, None),
        ("7d", 7 * 86400, None),
        ("30d", 30 * 86400, None),
        ("2w", 14 * 86400, None),
        ("daily", None, "day"),
        ("weekly", None, "week"),
        ("monthly", None, "month"),
        ("1mo", None, "month"),
        ("yearly", None, "year"),
        (" Monthly ", None, "month"),
    ],
)
def test_accepted_durations(text, seconds, calendar):
    duration = parse_duration(text)
    assert (duration.seconds, duration.calendar) == (seconds, calendar)


@pytest.mark.parametrize("text", ["", "0s", "-1d", "1.5h", "1y", "fortnightly", "1 d", "9999999999d"])
def test_unknown_durations_are_refused_with_the_accepted_forms(text):
    with pytest.raises(InvalidBudget, match="expected a fixed duration like 30s"):
        parse_duration(text)


def test_durations_longer_than_ten_years_are_refused():
    with pytest.raises(InvalidBudget, match="longer than ten years"):
        parse_duration("3661d")


def test_fixed_windows_repeat_from_the_anchor_not_from_midnight():
    start, end = window_containing(parse_duration("1d"), ANCHOR, ANCHOR + timedelta(days=2, hours=1))
    assert start == ANCHOR + timedelta(days=2)
    assert end == ANCHOR + timedelta(days=3)


def test_the_first_calendar_window_runs_from_the_anchor_to_the_next_boundary():
    start, end = window_containing(parse_duration("daily"), ANCHOR, ANCHOR + timedelta(hours=1))
    assert (start, end) == (ANCHOR, datetime(2025, 2, 1, tzinfo=UTC))
    start, end = window_containing(parse_duration("daily"), ANCHOR, datetime(2025, 2, 3, 8, tzinfo=UTC))
    assert (start, end) == (datetime(2025, 2, 3, tzinfo=UTC), datetime(2025, 2, 4, tzinfo=UTC))


def test_a_month_is_a_calendar_month_not_28_days():
    monthly = parse_duration("monthly")
    assert window_containing(monthly, ANCHOR, datetime(2025, 2, 27, tzinfo=UTC)) == (
        datetime(2025, 2, 1, tzinfo=UTC),
        datetime(2025, 3, 1, tzinfo=UTC),
    )
    assert window_containing(monthly, ANCHOR, datetime(2025, 12, 31, 23, 59, tzinfo=UTC))[1] == datetime(
        2026, 1, 1, tzinfo=UTC
    )


def test_february_of_a_leap_year_has_29_days():
    start, end = window_containing(parse_duration("monthly"), ANCHOR, datetime(2028, 2, 29, 12, tzinfo=UTC))
    assert end - start == timedelta(days=29)


def test_weeks_start_on_the_chosen_weekday():
    weekly = parse_duration("weekly")
    moment = datetime(2025, 11, 5, 12, tzinfo=UTC)  # a Wednesday
    assert window_containing(weekly, ANCHOR, moment)[0] == datetime(2025, 11, 3, tzinfo=UTC)  # Monday
    assert window_containing(weekly, ANCHOR, moment, week_start=6)[0] == datetime(2025, 11, 2, tzinfo=UTC)


def test_calendar_days_follow_the_budget_time_zone_across_dst():
    daily = parse_duration("daily")
    berlin = ZoneInfo("Europe/Berlin")
    # 30 March 2025: clocks go from 02:00 to 03:00 in Berlin, so the day has 23 hours.
    start, end = window_containing(daily, ANCHOR, datetime(2025, 3, 30, 12, tzinfo=UTC), tz="Europe/Berlin")
    assert start == datetime(2025, 3, 30, tzinfo=berlin)
    assert end - start == timedelta(hours=23)


def test_yearly_windows_start_on_the_first_of_january():
    assert window_containing(parse_duration("yearly"), ANCHOR, datetime(2026, 7, 1, tzinfo=UTC)) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_a_moment_before_the_anchor_has_no_window():
    with pytest.raises(ValueError, match="precedes the anchor"):
        window_containing(parse_duration("1h"), ANCHOR, ANCHOR - timedelta(seconds=1))


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2199, 1, 1), timezones=st.just(UTC))
zones = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "America/Santiago", "Pacific/Apia"]
)


@given(moments, st.integers(0, 10**8), zones)
def test_monthly_windows_are_whole_calendar_months_across_month_ends_and_leap_years(anchor, offset_minutes, tz):
    moment = anchor + timedelta(minutes=offset_minutes)
    start, end = window_containing(parse_duration("monthly"), anchor, moment, tz=tz)
    local_end = end.astimezone(ZoneInfo(tz))
    assert start <= moment < end
    assert (local_end.day, local_end.hour, local_end.minute) in ((1, 0, 0), (1, 1, 0))  # 01:00 only in a DST gap
    if start != anchor:
        local_start = start.astimezone(ZoneInfo(tz))
        assert local_start.day == 1
        months = (local_end.year - local_start.year) * 12 + local_end.month - local_start.month
        assert months == 1
        first = date(local_start.year, local_start.month, 1)
        days_in_month = (date(first.year + first.month // 12, first.month % 12 + 1, 1) - first).days
        assert days_in_month in (28, 29, 30, 31)
        assert (days_in_month == 29) == (first.month == 2 and _leap(first.year))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@given(moments, st.integers(1, 10**6), st.sampled_from(["30s", "1m", "1h", "1d", "7d", "30d"]))
def test_fixed_windows_tile_time_from_the_anchor(anchor, offset_seconds, text):
    duration = parse_duration(text)
    moment = anchor + timedelta(seconds=offset_seconds)
    start, end = window_containing(duration, anchor, moment)
    assert start <= moment < end
    assert end - start == timedelta(seconds=duration.seconds or 0)
    assert (start - anchor) % timedelta(seconds=duration.seconds or 1) == timedelta(0)


@given(moments, st.integers(0, 10**7), st.sampled_from(["daily", "weekly", "monthly", "yearly"]), zones)
def test_consecutive_calendar_windows_meet_without_gap_or_overlap(anchor, offset_minutes, text, tz):
    duration = parse_duration(text)
    moment = anchor + timedelta(minutes=offset_minutes)
    _start, end = window_containing(duration, anchor, moment, tz=tz)
    next_start, next_end = window_containing(duration, anchor, end, tz=tz)
    assert next_start == end < next_end
