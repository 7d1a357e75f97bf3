"""The replay-equality check: live budget state against the replay, every difference
named (DESIGN section 6, invariant 3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ledger.domain.budgets import BudgetState, LimitState
from ledger.domain.fold import advance, new_state
from ledger.replay.reference import CROSSING_KINDS


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of one scope where live and replay disagree."""

    scope_key: str
    field: str
    live: object
    replayed: object

    @property
    def delta_nanos(self) -> int | None:
        """replayed - live, for money fields."""
        if self.field.endswith("_nanos") and isinstance(self.live, int) and isinstance(self.replayed, int):
            return self.replayed - self.live
        return None


def compare_states(
    live: Mapping[str, BudgetState], replayed: Mapping[str, BudgetState], as_of: datetime
) -> list[Difference]:
    """Every difference between live and replayed states, live windows rolled to ``as_of``
    first (the worker's timer may not have ticked yet). A scope missing on one side counts
    as a scope nothing happened to. Entry counts are not compared: live counts each
    adjustment as an entry, the replay counts events."""
    differences: list[Difference] = []
    for scope in sorted(set(live) | set(replayed)):
        live_state = advance(live.get(scope) or new_state(scope), as_of)[0]
        replayed_state = replayed.get(scope) or new_state(scope)
        differences.extend(_scope_differences(scope, live_state, replayed_state))
    return differences


def _scope_differences(scope: str, live: BudgetState, replayed: BudgetState) -> list[Difference]:
    found = []
    for name in ("total_spend_nanos", "last_occurred_at", "alias"):
        if getattr(live, name) != getattr(replayed, name):
            found.append(Difference(scope, name, getattr(live, name), getattr(replayed, name)))
    live_limits = {limit.spec.limit_name: limit for limit in live.limits}
    replayed_limits = {limit.spec.limit_name: limit for limit in replayed.limits}
    for name in sorted(set(live_limits) | set(replayed_limits)):
        live_limit, replayed_limit = live_limits.get(name), replayed_limits.get(name)
        if live_limit is None or replayed_limit is None:
            found.append(Difference(scope, f"limit {name}", live_limit is not None, replayed_limit is not None))
            continue
        for field, live_value, replayed_value in _limit_fields(live_limit, replayed_limit):
            if live_value != replayed_value:
                found.append(Difference(scope, f"limit {name} {field}", live_value, replayed_value))
    return found


def _limit_fields(live: LimitState, replayed: LimitState) -> list[tuple[str, object, object]]:
    return [
        ("spend_nanos", live.spend_nanos, replayed.spend_nanos),
        ("window_start", live.window_start, replayed.window_start),
        ("window_end", live.window_end, replayed.window_end),
        ("anchor", live.anchor, replayed.anchor),
        ("spec", live.spec, replayed.spec),
        ("crossings", _crossings(live), _crossings(replayed)),
    ]


def _crossings(limit: LimitState) -> frozenset[tuple[str, int]]:
    return frozenset((kind, threshold) for kind, threshold in limit.alerted if kind in CROSSING_KINDS)
