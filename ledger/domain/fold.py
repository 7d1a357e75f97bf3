"""The fold: the one place budget state changes.

``apply(state, entry) -> (state, alerts)`` is used by the live worker and checked against
the SQL replay. Windows are by event time (``occurred_at``): an entry older than a
limit's current window belongs to a window already closed and does not count in it, an
entry past the window's end rolls the window over first. So the same entries give the
same windows and spend in any order.

Alerts are at most one per (scope, limit, window, kind, threshold): a repeated crossing in
the same window is not alerted twice, a crossing of a changed limit is a new crossing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ledger.domain.budgets import (
    AlertKind,
    BudgetAlert,
    BudgetCommand,
    BudgetSpec,
    BudgetState,
    LimitState,
    alert_message,
    all_fields,
    with_overall,
)
from ledger.domain.pricing import LedgerEntry
from ledger.domain.scopes import parse_scope_key
from ledger.domain.windows import parse_duration, window_containing

Alerts = tuple[BudgetAlert, ...]
_STATE_FIELDS = all_fields(BudgetState)
_LIMIT_FIELDS = all_fields(LimitState)


class Chargeable(Protocol):
    """What the fold reads of a charge: a ``LedgerEntry`` or a ``Charge``."""

    @property
    def entry_id(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def model(self) -> str: ...
    @property
    def cost_nanos(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Charge:
    """One ledger entry's charge to one scope: what travels to the scope's owner."""

    entry_id: str
    occurred_at: datetime
    model: str
    cost_nanos: int


def new_state(scope_key: str, alias: str | None = None) -> BudgetState:
    """The state of a scope nothing has happened to yet."""
    parse_scope_key(scope_key)
    return BudgetState.model_construct(_STATE_FIELDS, scope_key=scope_key, alias=alias)


def apply(state: BudgetState, entry: LedgerEntry) -> tuple[BudgetState, Alerts]:
    """Charge one ledger entry to one scope."""
    if state.scope_key not in entry.scope_keys:
        raise ValueError(f"entry {entry.entry_id} does not charge scope {state.scope_key}")
    return apply_batch(state, (entry,))


def apply_batch(state: BudgetState, entries: Iterable[Chargeable]) -> tuple[BudgetState, Alerts]:
    """Charge entries to one scope in the order given; the same as calling ``apply`` on
    each in turn, but the state is built once (the worker's hot path). The caller has
    checked that every entry charges this scope."""
    if not state.limits:
        return _charge_totals(state, entries), ()
    work = _Work.of(state)
    for entry in entries:
        work.total_spend_nanos += entry.cost_nanos
        work.entry_count += 1
        if work.last_occurred_at is None or entry.occurred_at > work.last_occurred_at:
            work.last_occurred_at = entry.occurred_at
        for limit in work.limits:
            if limit.spec.model is not None and limit.spec.model != entry.model:
                continue
            if entry.occurred_at < limit.window_start:
                continue  # belongs to a window already closed
            if limit.window_end is not None and entry.occurred_at >= limit.window_end:
                work.roll(limit, entry.occurred_at)
            was_exceeded = limit.exceeded
            limit.spend_nanos += entry.cost_nanos
            if was_exceeded and not limit.exceeded:  # a negative adjustment
                work.alert(limit, "recovered", limit.spec.max_budget_nanos or 0, entry.occurred_at, entry.entry_id)
            work.check_crossings(limit, entry.occurred_at, entry.entry_id)
    return work.build(), tuple(work.alerts)


def _charge_totals(state: BudgetState, entries: Iterable[Chargeable]) -> BudgetState:
    """``apply_batch`` for a scope with no limits: only its totals change (most scopes,
    users and end users without budgets, take this path)."""
    total, count, last = state.total_spend_nanos, state.entry_count, state.last_occurred_at
    for entry in entries:
        total += entry.cost_nanos
        count += 1
        if last is None or entry.occurred_at > last:
            last = entry.occurred_at
    return BudgetState.model_construct(
        _STATE_FIELDS,
        scope_key=state.scope_key,
        alias=state.alias,
        total_spend_nanos=total,
        entry_count=count,
        last_occurred_at=last,
    )


def apply_command(state: BudgetState, command: BudgetCommand) -> tuple[BudgetState, Alerts]:
    """Apply an upsert, delete, reset or set_overall to the scope it names, at
    ``command.issued_at``."""
    if command.scope_key != state.scope_key:
        raise ValueError(f"command {command.command_id} is for {command.scope_key}, not {state.scope_key}")
    work = _Work.of(state)
    at, trigger = command.issued_at, command.command_id
    if command.alias is not None:
        work.alias = command.alias
    if command.action == "delete":
        work.limits = []
    elif command.action == "reset":
        for limit in work.limits:
            if command.limit_name is None or limit.spec.limit_name == command.limit_name:
                work.restart(limit, at, trigger)
    else:
        specs = command.budgets
        if command.action == "set_overall":
            specs = with_overall(tuple(limit.spec for limit in work.limits), command.budgets[0])
        previous = {limit.spec.limit_name: limit for limit in work.limits}
        limits = []
        for spec in specs:
            kept = previous.get(spec.limit_name)
            if kept is None:
                limits.append(_WorkLimit.opened(spec, at))
                continue
            limit = kept
            if limit.spec.window_rules() != spec.window_rules() or limit.spec.model != spec.model:
                work.restart(limit, at, trigger, spec=spec)
            else:
                if limit.window_end is not None and at >= limit.window_end:
                    work.roll(limit, at)
                was_exceeded = limit.exceeded
                limit.spec = spec
                if was_exceeded and not limit.exceeded:
                    work.alert(limit, "recovered", spec.max_budget_nanos or 0, at, trigger)
                work.check_crossings(limit, at, trigger)
            limits.append(limit)
        work.limits = limits
    return work.build(), tuple(work.alerts)


def advance(state: BudgetState, now: datetime) -> tuple[BudgetState, Alerts]:
    """Roll over every window that ended by ``now`` (the worker's timer), so a budget
    resets even when no usage arrives. Returns ``state`` itself when nothing changed."""
    if not any(limit.window_end is not None and limit.window_end <= now for limit in state.limits):
        return state, ()
    work = _Work.of(state)
    for limit in work.limits:
        if limit.window_end is not None and limit.window_end <= now:
            work.roll(limit, now)
    return work.build(), tuple(work.alerts)


def alert_id(scope_key: str, limit_name: str, window_start: datetime, kind: AlertKind, threshold_nanos: int) -> str:
    """Deterministic id of an alert: the same crossing always gets the same id."""
    identity = f"{scope_key}\x1f{limit_name}\x1f{window_start.isoformat()}\x1f{kind}\x1f{threshold_nanos}"
    return "alert-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass(slots=True)
class _WorkLimit:
    spec: BudgetSpec
    anchor: datetime
    window_start: datetime
    window_end: datetime | None
    spend_nanos: int
    alerted: list[tuple[AlertKind, int]]

    @classmethod
    def of(cls, limit: LimitState) -> _WorkLimit:
        return cls(
            limit.spec, limit.anchor, limit.window_start, limit.window_end, limit.spend_nanos, list(limit.alerted)
        )

    @classmethod
    def opened(cls, spec: BudgetSpec, at: datetime) -> _WorkLimit:
        """A new series of windows anchored at ``at``, with nothing spent."""
        start, end = _first_window(spec, at)
        return cls(spec, at, start, end, 0, [])

    @property
    def exceeded(self) -> bool:
        return self.spec.max_budget_nanos is not None and self.spend_nanos > self.spec.max_budget_nanos

    def build(self) -> LimitState:
        return LimitState.model_construct(
            _LIMIT_FIELDS,
            spec=self.spec,
            anchor=self.anchor,
            window_start=self.window_start,
            window_end=self.window_end,
            spend_nanos=self.spend_nanos,
            alerted=tuple(self.alerted),
        )


def _first_window(spec: BudgetSpec, at: datetime) -> tuple[datetime, datetime | None]:
    if spec.duration is None:
        return at, None
    return window_containing(parse_duration(spec.duration), at, at, tz=spec.timezone, week_start=spec.week_start)


@dataclass(slots=True)
class _Work:
    """A mutable working copy of one scope's state, built back into a frozen one."""

    scope_key: str
    alias: str | None
    limits: list[_WorkLimit]
    total_spend_nanos: int
    entry_count: int
    last_occurred_at: datetime | None
    alerts: list[BudgetAlert] = field(default_factory=list)

    @classmethod
    def of(cls, state: BudgetState) -> _Work:
        return cls(
            state.scope_key,
            state.alias,
            [_WorkLimit.of(limit) for limit in state.limits],
            state.total_spend_nanos,
            state.entry_count,
            state.last_occurred_at,
        )

    def build(self) -> BudgetState:
        return BudgetState.model_construct(
            _STATE_FIELDS,
            scope_key=self.scope_key,
            alias=self.alias,
            limits=tuple(limit.build() for limit in self.limits),
            total_spend_nanos=self.total_spend_nanos,
            entry_count=self.entry_count,
            last_occurred_at=self.last_occurred_at,
        )

    def roll(self, limit: _WorkLimit, moment: datetime) -> None:
        """Close the current window and open the one holding ``moment`` (same anchor)."""
        assert limit.spec.duration is not None
        assert limit.window_end is not None
        assert moment >= limit.window_end, "roll only past the window's end"
        closed_end = limit.window_end
        start, end = window_containing(
            parse_duration(limit.spec.duration),
            limit.anchor,
            moment,
            tz=limit.spec.timezone,
            week_start=limit.spec.week_start,
        )
        was_exceeded = self._close(limit, closed_end, "window-end")
        limit.window_start, limit.window_end = start, end
        self._recovered_if(was_exceeded, limit, closed_end, "window-end")

    def restart(self, limit: _WorkLimit, at: datetime, trigger: str, *, spec: BudgetSpec | None = None) -> None:
        """A reset command or a change of window rules: a new series anchored at ``at``."""
        was_exceeded = self._close(limit, at, trigger)
        if spec is not None:
            limit.spec = spec
        limit.anchor = at
        limit.window_start, limit.window_end = _first_window(limit.spec, at)
        self._recovered_if(was_exceeded, limit, at, trigger)

    def _close(self, limit: _WorkLimit, at: datetime, trigger: str) -> bool:
        """Alert ``reset`` for a window that saw anything, empty it; return whether it
        was exceeded."""
        was_exceeded = limit.exceeded
        if limit.spend_nanos != 0 or limit.alerted:
            self.alert(limit, "reset", limit.spec.max_budget_nanos or 0, at, trigger)
        limit.spend_nanos = 0
        limit.alerted = []
        return was_exceeded

    def _recovered_if(self, was_exceeded: bool, limit: _WorkLimit, at: datetime, trigger: str) -> None:
        if was_exceeded and not limit.exceeded:
            self.alert(limit, "recovered", limit.spec.max_budget_nanos or 0, at, trigger)

    def check_crossings(self, limit: _WorkLimit, at: datetime, trigger: str) -> None:
        """Alert the soft threshold (spend >= soft) and the limit (spend > max) once each
        per window and threshold."""
        soft, hard = limit.spec.soft_budget_nanos, limit.spec.max_budget_nanos
        if soft is not None and limit.spend_nanos >= soft and ("soft-threshold", soft) not in limit.alerted:
            self.alert(limit, "soft-threshold", soft, at, trigger)
        if hard is not None and limit.spend_nanos > hard and ("exceeded", hard) not in limit.alerted:
            self.alert(limit, "exceeded", hard, at, trigger)

    def alert(self, limit: _WorkLimit, kind: AlertKind, threshold: int, at: datetime, trigger: str) -> None:
        if kind in ("exceeded", "soft-threshold", "recovered"):
            if (kind, threshold) in limit.alerted:
                return
            limit.alerted.append((kind, threshold))
        self.alerts.append(
            BudgetAlert.model_construct(
                schema_version=1,
                alert_id=alert_id(self.scope_key, limit.spec.limit_name, limit.window_start, kind, threshold),
                scope_key=self.scope_key,
                alias=self.alias,
                limit_name=limit.spec.limit_name,
                kind=kind,
                window_start=limit.window_start,
                window_end=limit.window_end,
                spend_nanos=limit.spend_nanos,
                max_budget_nanos=limit.spec.max_budget_nanos,
                soft_budget_nanos=limit.spec.soft_budget_nanos,
                threshold_nanos=threshold,
                occurred_at=at,
                trigger_id=trigger,
                message=alert_message(kind, limit.spend_nanos, limit.spec),
            )
        )


def charge(states: dict[str, BudgetState], entries: Iterable[LedgerEntry]) -> tuple[dict[str, BudgetState], Alerts]:
    """Apply entries to every scope they name, creating scopes on first use. Entries are
    grouped per scope (one state build per scope), keeping their order within a scope."""
    per_scope: dict[str, list[LedgerEntry]] = {}
    for entry in entries:
        for key in entry.scope_keys:
            per_scope.setdefault(key, []).append(entry)
    updated = dict(states)
    alerts: list[BudgetAlert] = []
    for key, scope_entries in per_scope.items():
        state, scope_alerts = apply_batch(updated.get(key) or new_state(key), scope_entries)
        updated[key] = state
        alerts.extend(scope_alerts)
    return updated, tuple(alerts)
