"""Pricing: an event and a price book in, a ledger entry with its cost in nanos out.

Arithmetic is integer: a rate with at most 18 decimal places is an integer count of
1e-18 USD per million tokens, so ``tokens * rate`` is an exact count of 1e-24 USD and one
division, rounded half-to-even, gives nanos. The cost is rounded once per event; the
breakdown is allocated so its parts add up to the cost exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import BATCH_EVENTS_MAX, FROZEN, SCHEMA_VERSION, EventId, ModelName, TokenUsage, UsageEvent
from ledger.domain.money import MAX_NANOS, allocate_rounded, usd_to_nanos
from ledger.domain.prices import PriceBook, RateValue, ResolvedPrice, TieredRate, TokenRates

# tokens x (1e-18 USD per million tokens) = 1e-24 USD; 1e15 of those make one nano.
_TOKENS_PER_MTOK = 10**6
_UNITS_PER_NANO = 10**15

CostSource = Literal["price_book", "reported", "replay"]
EntryKind = Literal["charge", "adjustment"]
TokenCounter = Callable[[str], int]


class CostBreakdown(BaseModel):
    """Where an event's cost came from, in nanos; the parts sum to the entry's cost."""

    model_config = FROZEN

    input_nanos: int = Field(default=0, ge=0)
    cache_read_nanos: int = Field(default=0, ge=0)
    cache_write_nanos: int = Field(default=0, ge=0)
    output_nanos: int = Field(default=0, ge=0)
    reasoning_nanos: int = Field(default=0, ge=0)
    request_nanos: int = Field(default=0, ge=0)

    @property
    def total_nanos(self) -> int:
        return (
            self.input_nanos
            + self.cache_read_nanos
            + self.cache_write_nanos
            + self.output_nanos
            + self.reasoning_nanos
            + self.request_nanos
        )


class LedgerEntry(BaseModel):
    """A priced event (kind ``charge``), or a correction published by a replay (kind
    ``adjustment``, whose cost may be negative). It names every scope it charges."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    entry_id: EventId
    event_id: EventId
    kind: EntryKind = "charge"
    occurred_at: AwareDatetime
    model: ModelName
    provider: ModelName | None = None
    priced_as: str | None = Field(default=None, max_length=512)
    scope_keys: tuple[str, ...] = Field(min_length=1, max_length=64)
    cost_nanos: int = Field(ge=-MAX_NANOS, le=MAX_NANOS)
    breakdown: CostBreakdown | None = None
    cost_source: CostSource
    price_book_version: str | None = None
    usage: TokenUsage
    tokens_estimated: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LedgerEntry:
        if self.kind == "charge" and self.cost_nanos < 0:
            raise ValueError("a charge cannot have a negative cost")
        if self.breakdown is not None and self.breakdown.total_nanos != self.cost_nanos:
            raise ValueError("breakdown does not add up to cost_nanos")
        return self


class LedgerEntryBatch(BaseModel):
    """What one ``ledger-entries`` message carries: the entries priced from one input
    message. ``batch_id`` is the same when that input is processed again, so a consumer
    deduplicates by ``batch_id`` or by each ``entry_id``."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=300)
    entries: tuple[LedgerEntry, ...] = Field(min_length=1, max_length=BATCH_EVENTS_MAX)

    @staticmethod
    def encode(batch_id: str, entries: list[LedgerEntry]) -> bytes:
        """The JSON of a batch, built from each entry's own JSON (the worker's hot path)."""
        head = b'{"schema_version":1,"batch_id":' + json.dumps(batch_id).encode() + b',"entries":['
        return head + b",".join(entry.model_dump_json().encode() for entry in entries) + b"]}"


@dataclass(frozen=True, slots=True)
class _IntegerRate:
    base: int
    tiers: tuple[tuple[int, int], ...]

    def at(self, input_tokens: int) -> int:
        for start, units in reversed(self.tiers):
            if input_tokens > start:
                return units
        return self.base


def _units(rate: Decimal) -> int:
    scaled = rate.scaleb(18)
    assert scaled == scaled.to_integral_value(), "rates carry at most 18 decimal places"
    return int(scaled)


def _integer_rate(rate: RateValue | None) -> _IntegerRate | None:
    if rate is None:
        return None
    if isinstance(rate, TieredRate):
        return _IntegerRate(_units(rate.base), tuple((tier.start, _units(tier.price)) for tier in rate.tiers))
    return _IntegerRate(_units(rate), ())


@dataclass(frozen=True, slots=True)
class _IntegerRates:
    input: _IntegerRate | None
    cache_read: _IntegerRate | None
    cache_write: _IntegerRate | None
    output: _IntegerRate | None
    reasoning: _IntegerRate | None
    request_units: int | None  # 1e-24 USD per request


_integer_rates_cache: dict[int, tuple[TokenRates, _IntegerRates]] = {}
_INTEGER_RATES_CACHE_MAX = 50_000


def _integer_rates(rates: TokenRates) -> _IntegerRates:
    # Keyed by identity and holding the object, so an id is never reused while cached.
    cached = _integer_rates_cache.get(id(rates))
    if cached is not None and cached[0] is rates:
        return cached[1]
    converted = _IntegerRates(
        input=_integer_rate(rates.input_mtok),
        cache_read=_integer_rate(rates.cache_read_mtok),
        cache_write=_integer_rate(rates.cache_write_mtok),
        output=_integer_rate(rates.output_mtok),
        reasoning=_integer_rate(rates.reasoning_mtok),
        request_units=None if rates.request_usd is None else _units(rates.request_usd) * _TOKENS_PER_MTOK,
    )
    if len(_integer_rates_cache) >= _INTEGER_RATES_CACHE_MAX:
        _integer_rates_cache.clear()
    _integer_rates_cache[id(rates)] = (rates, converted)
    return converted


def cost_breakdown(rates: TokenRates, usage: TokenUsage) -> CostBreakdown:
    """Exact cost of ``usage`` under ``rates``. Cache tokens without a cache rate are
    billed as input, reasoning tokens without a reasoning rate as output."""
    r = _integer_rates(rates)
    prompt = usage.prompt_tokens

    def part(rate: _IntegerRate | None, tokens: int) -> int:
        return 0 if rate is None or tokens == 0 else tokens * rate.at(prompt)

    cache_read = usage.cache_read_tokens if r.cache_read is not None else 0
    cache_write = usage.cache_write_tokens if r.cache_write is not None else 0
    reasoning = usage.reasoning_tokens if r.reasoning is not None else 0
    parts = [
        part(r.input, prompt - cache_read - cache_write),
        part(r.cache_read, cache_read),
        part(r.cache_write, cache_write),
        part(r.output, usage.completion_tokens - reasoning),
        part(r.reasoning, reasoning),
        r.request_units or 0,
    ]
    nanos = allocate_rounded(parts, _UNITS_PER_NANO)
    return CostBreakdown.model_construct(
        input_nanos=nanos[0],
        cache_read_nanos=nanos[1],
        cache_write_nanos=nanos[2],
        output_nanos=nanos[3],
        reasoning_nanos=nanos[4],
        request_nanos=nanos[5],
    )


def estimate_usage(event: UsageEvent, count_tokens: TokenCounter | None) -> tuple[TokenUsage, bool]:
    """The event's token usage, counted from its text when it reports none.
    Returns the usage and whether it was estimated."""
    if event.usage is not None:
        return event.usage, False
    if event.input_text is None and event.output_text is None:
        return TokenUsage(), False
    if count_tokens is None:
        raise InvalidUsage("the event has text but no usage, and no token counter is configured", field="usage")
    return (
        TokenUsage(
            prompt_tokens=count_tokens(event.input_text or ""),
            completion_tokens=count_tokens(event.output_text or ""),
        ),
        True,
    )


def price_event(
    event: UsageEvent,
    book: PriceBook,
    *,
    count_tokens: TokenCounter | None = None,
    trust_reported_cost: bool = False,
) -> LedgerEntry:
    """Price one event into a ledger entry charging every scope it names.

    Raises ``UnpricedModel`` when the book has no price (never a $0 charge) and
    ``InvalidUsage`` when there is nothing to price.
    """
    usage, estimated = estimate_usage(event, count_tokens)
    common: dict[str, Any] = dict(
        entry_id=event.event_id,
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        model=event.model,
        provider=event.provider,
        scope_keys=event.scope_keys(),
        usage=usage,
        tokens_estimated=estimated,
    )
    if trust_reported_cost and event.reported_cost is not None:
        return LedgerEntry(cost_nanos=usd_to_nanos(event.reported_cost), cost_source="reported", **common)
    if event.usage is None and event.input_text is None and event.output_text is None:
        raise InvalidUsage("only a reported_cost was given and reported costs are not trusted", field="usage")

    resolved, rates = _priced_rates(book, event.model, event.provider, event.occurred_at)
    breakdown = cost_breakdown(rates, usage)
    # Built from validated parts, so the model's checks hold by construction (a cost from
    # non-negative rates is >= 0 and is its breakdown's sum); not re-validated on the hot path.
    return LedgerEntry.model_construct(
        cost_nanos=breakdown.total_nanos,
        breakdown=breakdown,
        cost_source="price_book",
        price_book_version=book.version,
        priced_as=f"{resolved.provider_id or '-'}/{resolved.model_id}",
        **common,
    )


def _priced_rates(
    book: PriceBook, model: str, provider: str | None, occurred_at: datetime
) -> tuple[ResolvedPrice, TokenRates]:
    resolved = book.index.resolve(model, provider)
    if resolved is None:
        raise UnpricedModel(model, provider, book.version)
    rates = resolved.rates_at(occurred_at)
    if not rates.is_priced:
        raise UnpricedModel(model, provider, book.version)
    return resolved, rates


def usage_cost_nanos(book: PriceBook, model: str, usage: TokenUsage, occurred_at: datetime) -> int:
    """What ``usage`` of ``model`` costs at ``occurred_at``, exactly as ``price_event``
    would charge it (an admission's estimate). Raises ``UnpricedModel``."""
    _, rates = _priced_rates(book, model, None, occurred_at)
    return cost_breakdown(rates, usage).total_nanos


def price_at(book: PriceBook, model: str, provider: str | None, occurred_at: datetime) -> TokenRates:
    """The rates a model would be charged at a given time (for display and checks)."""
    resolved = book.index.resolve(model, provider)
    if resolved is None:
        raise UnpricedModel(model, provider, book.version)
    return resolved.rates_at(occurred_at)
