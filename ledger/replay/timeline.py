"""What the commands alone decide, computed with the fold itself: each limit's specs and
window anchors over time, and the calendar boundaries its windows need.

Charges never move an anchor or change a spec, so running ``apply_command`` over a scope's
commands in event-time order gives every limit's history; the SQL replay only adds up the
charges inside it. One implementation of the command rules, not a second one in SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.fold import apply_command, new_state
from ledger.domain.windows import CalendarUnit, calendar_floor, calendar_next, parse_duration

CALENDAR_BOUNDARIES_MAX = 2_000_000  # a daily budget over 5,000 years; more is a bug upstream


@dataclass(frozen=True, slots=True)
class LimitSegment:
    """A stretch of time ``[starts_at, ends_at)`` in which one limit of a scope has one
    spec. ``series`` numbers a run of windows from one anchor: it changes when a reset or a
    change of window rules opens a new one. ``checks_at_start``: the fold checks the new
    spec's thresholds against the window's spend at ``starts_at`` (a limit changed in
    place), as it does not for a limit just opened or restarted."""

    scope_key: str
    limit_name: str
    series: int
    starts_at: datetime
    ends_at: datetime | None
    anchor: datetime
    spec: BudgetSpec
    checks_at_start: bool


def command_order(command: BudgetCommand) -> tuple[datetime, str]:
    """Event-time order of commands (ties by id, so the order is total)."""
    return (command.issued_at, command.command_id)


def scope_history(commands: Iterable[BudgetCommand]) -> tuple[BudgetState, list[LimitSegment]]:
    """Run one scope's commands through the fold in event-time order: the state they leave
    (no charges in it) and every limit's segments. The first series number is 0."""
    ordered = sorted(commands, key=command_order)
    if not ordered:
        raise ValueError("a history needs at least one command")
    scope = ordered[0].scope_key
    state = new_state(scope)
    segments: list[LimitSegment] = []
    open_segments: dict[str, LimitSegment] = {}
    series = 0
    for command in ordered:
        if command.scope_key != scope:
            raise ValueError(f"command {command.command_id} is for {command.scope_key}, not {scope}")
        state, _ = apply_command(state, command)
        at = command.issued_at
        now_open: dict[str, LimitSegment] = {}
        for limit in state.limits:
            name = limit.spec.limit_name
            before = open_segments.get(name)
            same_series = before is not None and _kept(command, before, limit.spec)
            if before is not None and same_series and command.action == "reset":
                now_open[name] = before  # a reset of another limit leaves this one as it was
                continue
            if not same_series:
                series += 1
            now_open[name] = LimitSegment(
                scope_key=scope,
                limit_name=name,
                series=before.series if same_series and before is not None else series,
                starts_at=at,
                ends_at=None,
                anchor=limit.anchor,
                spec=limit.spec,
                checks_at_start=same_series,
            )
        for name, segment in open_segments.items():
            if now_open.get(name) is not segment:
                segments.append(_closed(segment, at))
        open_segments = now_open
    segments.extend(open_segments.values())
    return state, segments


def _kept(command: BudgetCommand, before: LimitSegment, spec: BudgetSpec) -> bool:
    """Whether ``command`` left the limit's series of windows running (the fold checks a
    kept limit's thresholds at once) rather than opening a new one. Anchors alone cannot
    tell when the limit was opened at this same instant."""
    if command.action == "reset":
        return command.limit_name is not None and command.limit_name != before.limit_name
    return before.spec.window_rules() == spec.window_rules() and before.spec.model == spec.model


def _closed(segment: LimitSegment, at: datetime) -> LimitSegment:
    return LimitSegment(
        segment.scope_key,
        segment.limit_name,
        segment.series,
        segment.starts_at,
        at,
        segment.anchor,
        segment.spec,
        segment.checks_at_start,
    )


@dataclass(frozen=True, slots=True)
class CalendarRule:
    """What a calendar window depends on besides its anchor."""

    unit: CalendarUnit
    timezone: str
    week_start: int


def calendar_rule(spec: BudgetSpec) -> CalendarRule | None:
    """The calendar rule of a spec, or None for fixed durations and no duration."""
    if spec.duration is None:
        return None
    duration = parse_duration(spec.duration)
    if duration.calendar is None:
        return None
    return CalendarRule(duration.calendar, spec.timezone, spec.week_start)


def calendar_boundaries(rule: CalendarRule, first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    """Every calendar period ``[start, end)`` of ``rule`` from the one holding ``first`` to
    the one holding ``last``, cut by the domain's own calendar (time zones, DST, weeks)."""
    start = calendar_floor(rule.unit, first, rule.timezone, rule.week_start)
    periods: list[tuple[datetime, datetime]] = []
    while start <= last:
        end = calendar_next(rule.unit, start, rule.timezone, rule.week_start)
        periods.append((start, end))
        if len(periods) > CALENDAR_BOUNDARIES_MAX:
            raise ValueError(f"more than {CALENDAR_BOUNDARIES_MAX} {rule.unit} periods between {first} and {last}")
        start = end
    return periods


def fixed_step(spec: BudgetSpec) -> timedelta | None:
    """The length of a fixed-duration window, or None."""
    if spec.duration is None:
        return None
    seconds = parse_duration(spec.duration).seconds
    return None if seconds is None else timedelta(seconds=seconds)
