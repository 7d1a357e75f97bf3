"""The default price book, built from the ``genai-prices`` package's bundled data.

Only the token kinds a usage event carries are taken (input, output, cache read, cache
write, reasoning, per request). Audio, image, search and per-character prices and the
service-tier variants (batch, flex, priority) are left out: an event that used them is
priced on its tokens alone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cache
from importlib.metadata import version

from genai_prices import types as gp
from genai_prices.data import providers as genai_providers

from ledger.domain.prices import (
    MatchRule,
    ModelPrices,
    PriceBook,
    PricePeriod,
    ProviderPrices,
    RateValue,
    Tier,
    TieredRate,
    TokenRates,
)

_TOKEN_PRICE_KEYS = {
    "input_mtok": "input_mtok",
    "output_mtok": "output_mtok",
    "cache_read_mtok": "cache_read_mtok",
    "cache_write_mtok": "cache_write_mtok",
    "output_reasoning_mtok": "reasoning_mtok",
}


def _match(clause: gp.MatchLogic) -> MatchRule:
    if isinstance(clause, gp.ClauseEquals):
        return MatchRule(equals=clause.equals)
    if isinstance(clause, gp.ClauseStartsWith):
        return MatchRule(starts_with=clause.starts_with)
    if isinstance(clause, gp.ClauseEndsWith):
        return MatchRule(ends_with=clause.ends_with)
    if isinstance(clause, gp.ClauseContains):
        return MatchRule(contains=clause.contains)
    if isinstance(clause, gp.ClauseRegex):
        return MatchRule(regex=clause.regex)
    if isinstance(clause, gp.ClauseOr):
        return MatchRule(any_of=tuple(_match(c) for c in clause.or_))
    if isinstance(clause, gp.ClauseAnd):
        return MatchRule(all_of=tuple(_match(c) for c in clause.and_))
    raise TypeError(f"unknown genai-prices clause {type(clause).__name__}")


def _rate(value: object) -> RateValue | None:
    if value is None:
        return None
    if isinstance(value, gp.TieredPrices):
        return TieredRate(base=value.base, tiers=tuple(Tier(start=t.start, price=t.price) for t in value.tiers))
    assert isinstance(value, Decimal)
    return value


def _rates(price: gp.ModelPrice) -> TokenRates:
    fields: dict[str, RateValue | None] = {
        ours: _rate(getattr(price, theirs, None)) for theirs, ours in _TOKEN_PRICE_KEYS.items()
    }
    per_thousand = getattr(price, "requests_kcount", None)
    request_usd = None if per_thousand is None else Decimal(per_thousand) / 1000
    return TokenRates(request_usd=request_usd, **fields)


def _periods(model: gp.ModelInfo) -> tuple[PricePeriod, ...]:
    if isinstance(model.prices, gp.ModelPrice):
        return (PricePeriod(rates=_rates(model.prices)),)
    periods = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if isinstance(constraint, gp.StartDateConstraint):
            periods.append(PricePeriod(starts_on=constraint.start_date, rates=_rates(conditional.prices)))
        elif isinstance(constraint, gp.TimeOfDateConstraint):
            periods.append(
                PricePeriod(
                    utc_time_from=_utc_time(constraint.start_time),
                    utc_time_to=_utc_time(constraint.end_time),
                    rates=_rates(conditional.prices),
                )
            )
        else:
            periods.append(PricePeriod(rates=_rates(conditional.prices)))
    return tuple(periods)


def _utc_time(value: time) -> time:
    if value.tzinfo is None:
        return value
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()


@cache
def genai_prices_book() -> PriceBook:
    """The bundled default book (cached: building it takes a moment)."""
    providers = tuple(
        ProviderPrices(
            provider_id=provider.id,
            model_match=_match(provider.model_match) if provider.model_match else None,
            provider_match=_match(provider.provider_match) if provider.provider_match else None,
            fallback_providers=tuple(provider.fallback_model_providers or ()),
            models=tuple(
                ModelPrices(model_id=model.id, match=_match(model.match), periods=_periods(model))
                for model in provider.models
            ),
        )
        for provider in genai_providers
    )
    return PriceBook(book_id="default", source=f"genai-prices {version('genai-prices')}", providers=providers)
