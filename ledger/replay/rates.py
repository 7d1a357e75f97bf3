"""A price book as intervals the SQL replay joins events to.

Which entry of a book a model name lands on is decided by ``PriceIndex.resolve`` (the one
implementation, with its overrides, provider rules and fallbacks), once per distinct
(model, provider) in the store; which of a model's periods is in force at a moment by
``ModelPrices.rates_at``, evaluated at every point where its answer can change (midnights,
the start dates and the daily time windows of its periods); which tier of a tiered rate
by ``TieredRate.at``, once per range of prompt sizes between two tier starts (an interval
row per range: events join on their prompt size, no per-event search of a tier list).
What remains is arithmetic, done in SQL: tokens times rates.

Rates are integers: 1e-18 USD per million tokens (as ``ledger.domain.pricing``), and
1e-24 USD per request, carried as DECIMAL(38, 0) (they may exceed 64 bits).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pyarrow as pa

from ledger.domain.prices import ModelPrices, PriceBook, RateValue, TieredRate, TokenRates
from ledger.domain.windows import epoch_us

_TOKENS_PER_MTOK = 10**6
_UNITS = pa.decimal128(38, 0)
RATE_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
FOREVER_US = 2**62
_PROMPT_BOUND = 2**62  # beyond any prompt size (ledger.domain.events.TOKENS_PER_FIELD_MAX)

PRICES_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("provider_key", pa.string()),  # the provider, or "" (no valid provider is empty)
        ("utc_day", pa.int64()),  # one row per UTC day an interval touches: events join on their day
        ("start_us", pa.int64()),
        ("end_us", pa.int64()),
        ("prompt_above", pa.int64()),  # the rates apply to prompt_tokens in (prompt_above, prompt_upto]
        ("prompt_upto", pa.int64()),
        ("priced", pa.bool_()),
        *((f"{kind}_units", _UNITS) for kind in RATE_KINDS),
        ("request_units", _UNITS),
    ]
)


def _units(rate: Decimal) -> int:
    scaled = rate.scaleb(18)
    assert scaled == scaled.to_integral_value(), "rates carry at most 18 decimal places"
    return int(scaled)


def _rate_units(rate: RateValue | None, prompt_tokens: int) -> Decimal | None:
    if rate is None:
        return None
    return Decimal(_units(rate.at(prompt_tokens) if isinstance(rate, TieredRate) else rate))


def _rows(model: str, provider: str | None, span: tuple[int, int], rates: TokenRates) -> list[dict[str, Any]]:
    """The rates over ``span``, a row per range of prompt sizes in which no tier changes."""
    kinds = [getattr(rates, f"{kind}_mtok") for kind in RATE_KINDS]
    starts = sorted({tier.start for rate in kinds if isinstance(rate, TieredRate) for tier in rate.tiers})
    bounds = [-_PROMPT_BOUND, *starts, _PROMPT_BOUND]
    rows = []
    for above, upto in pairwise(bounds):
        prompt_tokens = upto if upto != _PROMPT_BOUND else above + 1  # a tier applies above its start
        row: dict[str, Any] = {
            "model": model,
            "provider_key": provider or "",
            "utc_day": None,
            "start_us": span[0],
            "end_us": span[1],
            "prompt_above": above,
            "prompt_upto": upto,
            "priced": rates.is_priced,
            "request_units": None
            if rates.request_usd is None
            else Decimal(_units(rates.request_usd) * _TOKENS_PER_MTOK),
        }
        for kind, rate in zip(RATE_KINDS, kinds, strict=True):
            row[f"{kind}_units"] = _rate_units(rate, prompt_tokens)
        rows.append(row)
    return rows


def _change_points(model: ModelPrices, first: datetime, last: datetime) -> list[datetime]:
    """Every moment in [first, last] where ``model.rates_at`` may change its answer."""
    day = first.astimezone(UTC).date()
    points = {first}
    while day <= last.astimezone(UTC).date():
        points.add(datetime.combine(day, time(), UTC))
        for period in model.periods:
            for moment in (period.utc_time_from, period.utc_time_to):
                if moment is not None:
                    points.add(datetime.combine(day, moment, UTC))
        day += timedelta(days=1)
    return sorted(point for point in points if first <= point <= last)


_DAY_US = 86_400 * 1_000_000


def _per_day(row: dict[str, Any], first_us: int, last_us: int) -> list[dict[str, Any]]:
    """The row once per UTC day its interval touches within [first_us, last_us]."""
    start, end = max(row["start_us"], first_us), min(row["end_us"], last_us + 1)
    return [{**row, "utc_day": day} for day in range(start // _DAY_US, (end - 1) // _DAY_US + 1)]


def price_intervals(book: PriceBook, references: Iterable[tuple[str, str | None, datetime, datetime]]) -> pa.Table:
    """Rows of (model, provider, UTC day, [start_us, end_us), (prompt_above, prompt_upto],
    rates) covering each reference's events between its first and last time; a reference
    the book does not price has no row (its events are unpriced)."""
    rows: list[dict[str, Any]] = []
    for model, provider, first, last in references:
        rows.extend(
            day_row
            for row in _intervals(book, model, provider, first, last)
            for day_row in _per_day(row, epoch_us(first), epoch_us(last))
        )
    return pa.Table.from_pylist(rows, schema=PRICES_SCHEMA)


def _intervals(
    book: PriceBook, model: str, provider: str | None, first: datetime, last: datetime
) -> list[dict[str, Any]]:
    """One reference's rates as intervals over [first, last] (none: unpriced)."""
    resolved = book.index.resolve(model, provider)
    if resolved is None:
        return []
    if resolved.override is not None or (resolved.model is not None and len(resolved.model.periods) == 1):
        return _rows(model, provider, (-FOREVER_US, FOREVER_US), resolved.rates_at(first))
    assert resolved.model is not None
    spans: list[tuple[int, int, TokenRates]] = []
    for point in _change_points(resolved.model, first, last):
        rates = resolved.model.rates_at(point)
        if spans and spans[-1][2] is rates:
            continue
        if spans:
            spans[-1] = (spans[-1][0], epoch_us(point), spans[-1][2])
        spans.append((epoch_us(point), FOREVER_US, rates))
    return [row for start_us, end_us, rates in spans for row in _rows(model, provider, (start_us, end_us), rates)]
