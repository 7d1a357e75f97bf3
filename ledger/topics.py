"""Topic names (DESIGN section 3), shared by the worker, the api and the SDK."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic of the ledger under one prefix."""

    usage: str
    budget_commands: str
    prices: str
    ledger_entries: str
    budget_alerts: str
    budget_state: str
    dead_letter: str
    admissions: str
    rate_limits: str

    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    # Compacted topics keep the last record per key: price books, snapshots, rate limits.
    def compacted(self) -> tuple[str, ...]:
        return (self.prices, self.budget_state, self.rate_limits)

    # Kept whole, forever: budget configuration is event-sourced, and compaction would drop
    # every reset and limit change but the last per scope.
    def kept_forever(self) -> tuple[str, ...]:
        return (self.budget_commands,)


def topic_names(prefix: str) -> TopicNames:
    """Names under ``prefix`` (e.g. ``spend-ledger.usage``)."""
    return TopicNames(
        usage=f"{prefix}usage",
        budget_commands=f"{prefix}budget-commands",
        prices=f"{prefix}prices",
        ledger_entries=f"{prefix}ledger-entries",
        budget_alerts=f"{prefix}budget-alerts",
        budget_state=f"{prefix}budget-state",
        dead_letter=f"{prefix}dead-letter",
        admissions=f"{prefix}admissions",
        rate_limits=f"{prefix}rate-limits",
    )


@dataclass(frozen=True, slots=True)
class InternalTopicNames:
    """The worker's private topics between its stages (not for other consumers)."""

    usage_by_event: str
    scope_charges: str

    def all(self) -> tuple[str, ...]:
        return (self.usage_by_event, self.scope_charges)


def internal_topic_names(prefix: str) -> InternalTopicNames:
    """Names under ``prefix``, marked internal."""
    return InternalTopicNames(
        usage_by_event=f"{prefix}internal.usage-by-event", scope_charges=f"{prefix}internal.scope-charges"
    )
