"""A tour of the domain core with no services: price a day of sample calls, fold them
into budgets, and show the result (``spend-ledger demo``). ``spend-ledger dev --demo``
sends the same budgets and calls to the live stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger.domain.budgets import BudgetAlert, BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.errors import LedgerError
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.fold import apply_command, charge, new_state
from ledger.domain.money import format_usd, usd_to_nanos
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import LedgerEntry, price_event
from ledger.tokenizer import count_tokens

DEMO_START = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
UNPRICED_DEMO_MODEL = "acme-private-llm"  # no price book knows it: its call is a dead letter


@dataclass
class DemoResult:
    """What the demo computed, for printing or for tests."""

    entries: list[LedgerEntry] = field(default_factory=list)
    dead_letters: list[tuple[UsageEvent, str]] = field(default_factory=list)
    states: dict[str, BudgetState] = field(default_factory=dict)
    alerts: list[BudgetAlert] = field(default_factory=list)


def demo_commands() -> list[BudgetCommand]:
    """Budgets for a team, a user and a key, in LiteLLM's spirit (daily and monthly)."""
    return [
        BudgetCommand(
            command_id="demo-budget-team-research",
            scope_key="team:research",
            action="upsert",
            issued_at=DEMO_START,
            alias="Research",
            budgets=(
                BudgetSpec(
                    max_budget_nanos=usd_to_nanos("0.05"), soft_budget_nanos=usd_to_nanos("0.03"), duration="daily"
                ),
                BudgetSpec(max_budget_nanos=usd_to_nanos("1.00"), duration="monthly"),
            ),
        ),
        BudgetCommand(
            command_id="demo-budget-user-alice",
            scope_key="user:alice",
            action="upsert",
            issued_at=DEMO_START,
            budgets=(BudgetSpec(max_budget_nanos=usd_to_nanos("0.02"), duration="1d"),),
        ),
        BudgetCommand(
            command_id="demo-budget-key-ci",
            scope_key="key:sk-ci",
            action="upsert",
            issued_at=DEMO_START,
            budgets=(BudgetSpec(max_budget_nanos=usd_to_nanos("0.001"), duration="1h"),),
        ),
    ]


def demo_events(
    start: datetime = DEMO_START, *, step: timedelta = timedelta(minutes=7), id_prefix: str = "demo-"
) -> list[UsageEvent]:
    """A morning of calls across three providers, a text-only call, an unpriced model
    and a duplicate delivery. The i-th call occurs at ``start + i * step``; ``spend-ledger
    dev --demo`` sends them all at once (``step`` 0) under ids unique to its run."""
    calls = [
        ("alice", "research", "sk-alice", "gpt-4o", "openai", TokenUsage(prompt_tokens=1_200, completion_tokens=400)),
        (
            "alice",
            "research",
            "sk-alice",
            "claude-sonnet-4-5",
            "anthropic",
            TokenUsage(prompt_tokens=3_000, completion_tokens=900, cache_read_tokens=2_000),
        ),
        (
            "bob",
            "research",
            "sk-bob",
            "gemini-2.5-flash",
            "google",
            TokenUsage(prompt_tokens=8_000, completion_tokens=1_500, reasoning_tokens=600),
        ),
        ("alice", "research", "sk-alice", "gpt-4o", "openai", TokenUsage(prompt_tokens=900, completion_tokens=700)),
        ("carol", "support", "sk-ci", "gpt-4o-mini", "openai", TokenUsage(prompt_tokens=2_500, completion_tokens=300)),
        (
            "bob",
            "research",
            "sk-bob",
            "o3",
            "openai",
            TokenUsage(prompt_tokens=4_000, completion_tokens=2_000, reasoning_tokens=1_200),
        ),
        (
            "alice",
            "research",
            "sk-alice",
            "claude-sonnet-4-5",
            "anthropic",
            TokenUsage(prompt_tokens=6_000, completion_tokens=1_200, cache_write_tokens=4_000),
        ),
        ("carol", "support", "sk-ci", "gpt-4o-mini", "openai", TokenUsage(prompt_tokens=5_000, completion_tokens=800)),
        ("bob", "research", "sk-bob", UNPRICED_DEMO_MODEL, None, TokenUsage(prompt_tokens=500, completion_tokens=100)),
    ]
    events = [
        UsageEvent(
            event_id=f"{id_prefix}{i:03d}",
            occurred_at=start + step * i,
            user_id=user,
            team_id=team,
            key_id=key,
            model=model,
            provider=provider,
            usage=usage,
            tags=("demo",),
        )
        for i, (user, team, key, model, provider, usage) in enumerate(calls, start=1)
    ]
    events.append(
        UsageEvent(
            event_id=f"{id_prefix}text-only",
            occurred_at=start + step * 75 / 7,  # 75 minutes in the default spacing
            user_id="carol",
            team_id="support",
            key_id="sk-ci",
            model="gpt-4o-mini",
            provider="openai",
            input_text="Summarise the incident report for the on-call handover. " * 40,
            output_text="The queue consumer stalled after the broker restart; offsets were replayed. " * 12,
        )
    )
    events.append(events[0])  # a producer retry: same event_id, charged once
    return events


def demo_budget_requests() -> list[tuple[str, str, dict[str, str]]]:
    """The first limit of each of ``demo_commands``' budgets as ``(kind, id, body)`` of
    ``PUT /v1/budgets/{kind}/{id}``, money as exact USD text: what ``dev --demo`` sets."""
    requests = []
    for command in demo_commands():
        kind, scope_id = command.scope_key.split(":", 1)
        spec = command.budgets[0]
        body: dict[str, str] = {}
        if spec.duration is not None:
            body["budget_duration"] = spec.duration
        if spec.max_budget_nanos is not None:
            body["max_budget"] = format_usd(spec.max_budget_nanos)
        if spec.soft_budget_nanos is not None:
            body["soft_budget"] = format_usd(spec.soft_budget_nanos)
        if command.alias is not None:
            body["alias"] = command.alias
        requests.append((kind, scope_id, body))
    return requests


def run_demo(book: PriceBook) -> DemoResult:
    """Price the sample, apply the budgets, fold everything; pure apart from the book."""
    result = DemoResult()
    for command in demo_commands():
        state = result.states.get(command.scope_key) or new_state(command.scope_key)
        result.states[command.scope_key], alerts = apply_command(state, command)
        result.alerts.extend(alerts)
    seen: set[str] = set()
    for event in demo_events():
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        try:
            result.entries.append(price_event(event, book, count_tokens=count_tokens))
        except LedgerError as error:
            result.dead_letters.append((event, f"{error.reason}: {error.message}"))
    result.states, alerts = charge(result.states, result.entries)
    result.alerts.extend(alerts)
    return result
