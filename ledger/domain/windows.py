"""Budget durations and the event-time windows they cut.

Fixed durations (``30s``, ``1m``, ``1h``, ``1d``, ``7d``, ``2w``...) repeat every N seconds
from the budget's anchor. Calendar durations (``daily``, ``weekly``, ``monthly``,
``yearly``; ``1mo`` is LiteLLM's spelling of monthly) follow the calendar in the budget's
time zone: days at midnight, weeks on the chosen weekday, months on the 1st, years on
1 January. A month is a calendar month, never 28 or 30 days.

The anchor is when the budget's current series of windows began (created, reset, or its
duration changed): the first window runs from the anchor to the next boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.domain.errors import InvalidBudget

CalendarUnit = Literal["day", "week", "month", "year"]

FIXED_SECONDS_MAX = 3_660 * 86_400  # ten years
_FIXED = re.compile(r"^([1-9][0-9]{0,8})(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_CALENDAR: dict[str, CalendarUnit] = {
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "1mo": "month",
    "yearly": "year",
}
DURATION_HELP = "a fixed duration like 30s, 1m, 1h, 1d, 7d, 30d, 2w, or daily, weekly, monthly (1mo), yearly"


@dataclass(frozen=True, slots=True)
class BudgetDuration:
    """A parsed duration: exactly one of ``seconds`` (fixed) or ``calendar`` is set."""

    text: str
    seconds: int | None
    calendar: CalendarUnit | None


@cache
def parse_duration(text: str) -> BudgetDuration:
    """Parse a budget duration, or raise ``InvalidBudget`` naming the accepted forms."""
    spelled = text.strip().lower()
    if spelled in _CALENDAR:
        return BudgetDuration(text=spelled, seconds=None, calendar=_CALENDAR[spelled])
    match = _FIXED.match(spelled)
    if match is None:
        raise InvalidBudget(f"unknown budget duration {text!r}: expected {DURATION_HELP}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > FIXED_SECONDS_MAX:
        raise InvalidBudget(f"budget duration {text!r} is longer than ten years")
    return BudgetDuration(text=spelled, seconds=seconds, calendar=None)


@cache
def zone(name: str) -> ZoneInfo:
    """The time zone called ``name``, or ``InvalidBudget``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidBudget(f"unknown time zone {name!r}") from exc


def window_containing(
    duration: BudgetDuration,
    anchor: datetime,
    moment: datetime,
    *,
    tz: str = "UTC",
    week_start: int = 0,
) -> tuple[datetime, datetime]:
    """The window ``[start, end)`` of a budget anchored at ``anchor`` that holds ``moment``
    (``moment >= anchor``). Both bounds are UTC."""
    if moment < anchor:
        raise ValueError("moment precedes the anchor: it belongs to no window of this series")
    anchor = anchor.astimezone(UTC)
    moment = moment.astimezone(UTC)
    if duration.seconds is not None:
        step = timedelta(seconds=duration.seconds)
        start = anchor + ((moment - anchor) // step) * step
        end = start + step
    else:
        assert duration.calendar is not None
        floor = calendar_floor(duration.calendar, moment, tz, week_start)
        start = max(anchor, floor)
        end = calendar_next(duration.calendar, moment, tz, week_start)
    assert start <= moment < end, "window must hold the moment"
    return start, end


def epoch_us(moment: datetime) -> int:
    """Microseconds since 1970-01-01 UTC, exact (datetimes hold microseconds)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def calendar_floor(unit: CalendarUnit, moment: datetime, tz: str, week_start: int) -> datetime:
    """The last calendar boundary at or before ``moment``, in UTC."""
    local_day = moment.astimezone(zone(tz)).date()
    return _local_midnight(_period_first_day(unit, local_day, week_start), tz)


def calendar_next(unit: CalendarUnit, moment: datetime, tz: str, week_start: int) -> datetime:
    """The first calendar boundary strictly after ``moment``, in UTC."""
    first = _period_first_day(unit, moment.astimezone(zone(tz)).date(), week_start)
    if unit == "day":
        following = first + timedelta(days=1)
    elif unit == "week":
        following = first + timedelta(days=7)
    elif unit == "month":
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        following = date(first.year + 1, 1, 1)
    return _local_midnight(following, tz)


def _period_first_day(unit: CalendarUnit, day: date, week_start: int) -> date:
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=(day.weekday() - week_start) % 7)
    if unit == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _local_midnight(day: date, tz: str) -> datetime:
    # Where midnight falls in a DST gap, fold=0 gives the instant of the transition itself,
    # so boundaries stay strictly increasing.
    return datetime(day.year, day.month, day.day, tzinfo=zone(tz)).astimezone(UTC)
