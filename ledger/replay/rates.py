"""A price book as a table the SQL replay joins events to.

Which entry of a book a model name lands on is decided by ``PriceIndex.resolve`` (the one
implementation, with its overrides, provider rules and fallbacks), once per distinct
(model, provider) of the store. What remains is arithmetic, done in SQL: the period in
force at the event's time, the tier for its prompt size, tokens times rates.

Rates are integers: 1e-18 USD per million tokens (as ``ledger.domain.pricing``), and
1e-24 USD per request, carried as DECIMAL(38, 0) (they may exceed 64 bits).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pyarrow as pa

from ledger.domain.prices import PriceBook, RateValue, TieredRate, TokenRates

_TOKENS_PER_MTOK = 10**6
_UNITS = pa.decimal128(38, 0)
_TIERS = pa.list_(pa.struct([("start", pa.int64()), ("units", _UNITS)]))
RATE_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")

RATES_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("provider", pa.string()),
        ("period", pa.int32()),
        ("starts_on", pa.date32()),
        ("utc_time_from", pa.time64("us")),
        ("utc_time_to", pa.time64("us")),
        ("priced", pa.bool_()),
        ("priced_as", pa.string()),
        *((f"{kind}_units", _UNITS) for kind in RATE_KINDS),
        *((f"{kind}_tiers", _TIERS) for kind in RATE_KINDS),
        ("request_units", _UNITS),
    ]
)


def _units(rate: Decimal) -> int:
    scaled = rate.scaleb(18)
    assert scaled == scaled.to_integral_value(), "rates carry at most 18 decimal places"
    return int(scaled)


def _rate_columns(rate: RateValue | None) -> tuple[Decimal | None, list[dict[str, Any]]]:
    if rate is None:
        return None, []
    if isinstance(rate, TieredRate):
        tiers = [{"start": tier.start, "units": Decimal(_units(tier.price))} for tier in rate.tiers]
        return Decimal(_units(rate.base)), tiers
    return Decimal(_units(rate)), []


def _row(
    model: str, provider: str | None, period: int, priced_as: str, rates: TokenRates, **when: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model,
        "provider": provider,
        "period": period,
        "starts_on": when.get("starts_on"),
        "utc_time_from": when.get("utc_time_from"),
        "utc_time_to": when.get("utc_time_to"),
        "priced": rates.is_priced,
        "priced_as": priced_as,
        "request_units": None if rates.request_usd is None else Decimal(_units(rates.request_usd) * _TOKENS_PER_MTOK),
    }
    for kind in RATE_KINDS:
        units, tiers = _rate_columns(getattr(rates, f"{kind}_mtok"))
        row[f"{kind}_units"] = units
        row[f"{kind}_tiers"] = tiers
    return row


def rates_table(book: PriceBook, references: Iterable[tuple[str, str | None]]) -> pa.Table:
    """One row per price period of each (model, provider) the book prices; a reference
    the book does not price has no row (its events are unpriced)."""
    rows = []
    for model, provider in references:
        resolved = book.index.resolve(model, provider)
        if resolved is None:
            continue
        priced_as = f"{resolved.provider_id or '-'}/{resolved.model_id}"
        if resolved.override is not None:
            rows.append(_row(model, provider, 0, priced_as, resolved.override.rates))
            continue
        assert resolved.model is not None
        for index, period in enumerate(resolved.model.periods):
            rows.append(
                _row(
                    model,
                    provider,
                    index,
                    priced_as,
                    period.rates,
                    starts_on=period.starts_on,
                    utc_time_from=period.utc_time_from,
                    utc_time_to=period.utc_time_to,
                )
            )
    return pa.Table.from_pylist(rows, schema=RATES_SCHEMA)
