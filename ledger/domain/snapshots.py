"""A scope's live state with its input positions: what the worker keeps per scope.

Kafka without transactions delivers at least once: after a crash or a rebalance, input
already folded may come again. A ``BudgetSnapshot`` records, per input source, the last
offset folded into it; input at or below that offset is recognised and skipped. State and
positions are written as one record, so folding the same input twice changes nothing.

A restore (``ledger.restore``) rebuilds a scope from the store when the log is gone: its
input replaces the state whole, from source ``r`` at the restore's stamp, so the same
restore folded twice changes nothing and a later restore replaces an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ledger.domain.budgets import BudgetAlert, BudgetCommand, BudgetState, all_fields
from ledger.domain.events import FROZEN, SCHEMA_VERSION
from ledger.domain.fold import Alerts, Charge, advance, apply_batch, apply_command, new_state

SOURCES_PER_SCOPE_MAX = 4_096  # one per input partition; more means a misconfiguration
RESTORE_SOURCE = "r"  # a restore's input: its offset is the restore's stamp (microseconds)


class BudgetSnapshot(BaseModel):
    """What the ``budget-state`` topic carries per scope key (compacted: the last one wins).

    ``applied`` maps an input source (``u3``: priced usage from partition 3, ``c0``: budget
    commands from partition 0) to the last offset folded in. Never mutate it in place.
    """

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    state: BudgetState
    applied: dict[str, int] = Field(default_factory=dict, max_length=SOURCES_PER_SCOPE_MAX)


_SNAPSHOT_FIELDS = all_fields(BudgetSnapshot)


@dataclass(frozen=True, slots=True)
class ScopeInput:
    """Input for one scope from one source message: charges, one budget command, or the
    state a restore puts in place."""

    source: str
    offset: int
    charges: tuple[Charge, ...] = ()
    command: BudgetCommand | None = None
    restore: BudgetState | None = None


def empty_snapshot(scope_key: str) -> BudgetSnapshot:
    """The snapshot of a scope nothing has happened to yet."""
    return BudgetSnapshot.model_construct(
        _SNAPSHOT_FIELDS, schema_version=SCHEMA_VERSION, state=new_state(scope_key), applied={}
    )


def fold_inputs(snapshot: BudgetSnapshot, inputs: Iterable[ScopeInput]) -> tuple[BudgetSnapshot, Alerts]:
    """Fold a scope's inputs in order, skipping any already folded (offset at or below
    the source's recorded one). Consecutive charges are folded with one state build."""
    state = snapshot.state
    applied = dict(snapshot.applied)
    alerts: list[BudgetAlert] = []
    pending: list[Charge] = []
    for item in inputs:
        if item.offset <= applied.get(item.source, -1):
            continue
        applied[item.source] = item.offset
        if item.command is None and item.restore is None:
            pending.extend(item.charges)
            continue
        if pending:
            state, charged = apply_batch(state, pending)
            alerts.extend(charged)
            pending = []
        if item.restore is not None:
            if item.restore.scope_key != state.scope_key:
                raise ValueError(f"a restore of {item.restore.scope_key} reached {state.scope_key}")
            state = item.restore  # alerted crossings come with it: none is sent again
            continue
        assert item.command is not None
        state, commanded = apply_command(state, item.command)
        alerts.extend(commanded)
    if pending:
        state, charged = apply_batch(state, pending)
        alerts.extend(charged)
    if state is snapshot.state and applied == snapshot.applied:
        return snapshot, ()
    return BudgetSnapshot.model_construct(
        _SNAPSHOT_FIELDS, schema_version=SCHEMA_VERSION, state=state, applied=applied
    ), tuple(alerts)


def fold_tick(snapshot: BudgetSnapshot, now: datetime) -> tuple[BudgetSnapshot, Alerts]:
    """Roll over windows that ended by ``now``; the snapshot itself when nothing changed."""
    state, alerts = advance(snapshot.state, now)
    if state is snapshot.state:
        return snapshot, ()
    return BudgetSnapshot.model_construct(
        _SNAPSHOT_FIELDS, schema_version=SCHEMA_VERSION, state=state, applied=snapshot.applied
    ), alerts


def next_window_end(snapshot: BudgetSnapshot) -> datetime | None:
    """When the earliest current window of the scope ends (None: no window ends)."""
    ends = [limit.window_end for limit in snapshot.state.limits if limit.window_end is not None]
    return min(ends) if ends else None
