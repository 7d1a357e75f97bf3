"""The replay done the slow way: price each event and fold everything in event-time
order with the live fold itself. The SQL replay (``ledger.replay.engine``) must agree with
it to the nano; the property tests hold them to that."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ledger.domain.budgets import BudgetAlert, BudgetCommand, BudgetState
from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import UsageEvent
from ledger.domain.fold import advance, apply_batch, apply_command, new_state
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import LedgerEntry, TokenCounter, price_event
from ledger.replay.engine import Crossing

CROSSING_KINDS = ("exceeded", "soft-threshold")


def fold_in_event_time(
    events: Iterable[UsageEvent],
    commands: Iterable[BudgetCommand],
    book: PriceBook,
    as_of: datetime,
    *,
    count_tokens: TokenCounter | None = None,
    trust_reported_cost: bool = False,
) -> tuple[dict[str, BudgetState], frozenset[Crossing]]:
    """Every scope's state at ``as_of`` and every crossing, folding entries and commands
    in event-time order (a command before an entry at the same instant). The first event
    of an event_id counts, priced or not (as the worker's dedup has it)."""
    entries: dict[str, LedgerEntry] = {}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        if event.occurred_at > as_of:
            continue
        try:
            entries[event.event_id] = price_event(
                event, book, count_tokens=count_tokens, trust_reported_cost=trust_reported_cost
            )
        except (UnpricedModel, InvalidUsage):
            continue
    timeline: list[tuple[datetime, int, str, LedgerEntry | BudgetCommand]] = [
        (entry.occurred_at, 1, entry.entry_id, entry) for entry in entries.values()
    ]
    timeline += [(c.issued_at, 0, c.command_id, c) for c in commands if c.issued_at <= as_of]
    timeline.sort(key=lambda item: item[:3])

    states: dict[str, BudgetState] = {}
    crossings: set[Crossing] = set()

    def note(alerts: tuple[BudgetAlert, ...]) -> None:
        for alert in alerts:
            if alert.kind in CROSSING_KINDS:
                crossings.add(
                    Crossing(alert.scope_key, alert.limit_name, alert.window_start, alert.kind, alert.threshold_nanos)
                )

    for _, _, _, item in timeline:
        if isinstance(item, BudgetCommand):
            state = states.get(item.scope_key) or new_state(item.scope_key)
            states[item.scope_key], alerts = apply_command(state, item)
            note(alerts)
            continue
        for scope in item.scope_keys:
            state = states.get(scope) or new_state(scope)
            states[scope], alerts = apply_batch(state, (item,))
            note(alerts)
    return {scope: advance(state, as_of)[0] for scope, state in states.items()}, frozenset(crossings)
