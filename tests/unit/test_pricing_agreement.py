"""Our pricing agrees with its sources.

1. With the default book (built from genai-prices), ``price_event`` charges exactly what
   ``genai_prices.calc_price`` computes, rounded half-to-even to the nano, for every model
   whose price uses only the token kinds a usage event carries.
2. A book imported from LiteLLM's price file and the default book charge the same, to the
   nano, for the models whose source prices agree.

``tests/data/litellm_prices_sample.json`` holds 40 entries cut verbatim from
``model_prices_and_context_window_backup.json`` of LiteLLM 1.106.12. Dates are fixed
constants: the domain never reads the clock, and neither do these tests.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import cache
from pathlib import Path

from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.prices import MatchRule, PriceBook, RateValue, TokenRates
from ledger.domain.pricing import price_event
from ledger.pricebooks.genai import genai_prices_book
from ledger.pricebooks.litellm import price_book_from_litellm_json

SAMPLE_PATH = Path(__file__).parents[1] / "data" / "litellm_prices_sample.json"
# Price keys of genai-prices that a usage event can be charged for; a model whose price
# has any other key (audio, images, web searches, 1h cache writes...) is not compared.
SUPPORTED_GENAI_KEYS = frozenset(
    {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok", "requests_kcount"}
)
AT = datetime(2025, 11, 1, 12, tzinfo=UTC)
TODAY = datetime.combine(date(2026, 11, 25), time(12), tzinfo=UTC)  # a constant: tests never read the clock
COMPARED_MODELS_MIN = 1_000
AGREEING_MODELS_MIN = 10
TIER_EDGES = (128_000, 128_001, 200_000, 200_001, 256_000, 256_001, 272_000, 272_001)

FIXED_USAGES = (
    TokenUsage(prompt_tokens=1_234, completion_tokens=567, cache_read_tokens=200, cache_write_tokens=100),
    TokenUsage(
        prompt_tokens=250_001,
        completion_tokens=3_333,
        cache_read_tokens=50_000,
        cache_write_tokens=7,
        reasoning_tokens=1_000,
    ),
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A model name and provider to price, as a caller would send them."""

    provider_id: str
    model: str


def genai_cost_nanos(reference: Reference, usage: TokenUsage, occurred_at: datetime) -> int:
    """genai-prices' total for this usage, in nanos rounded half-to-even (exact Decimal)."""
    genai_usage = Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unsupported key would be silently unpriced
        total = calc_price(
            genai_usage, reference.model, provider_id=reference.provider_id, genai_request_timestamp=occurred_at
        ).total_price
    with localcontext() as context:
        context.prec = 80
        return int((total * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def our_cost_nanos(book: PriceBook, model: str, provider: str | None, usage: TokenUsage, occurred_at: datetime) -> int:
    event = UsageEvent(event_id="e1", occurred_at=occurred_at, model=model, provider=provider, usage=usage)
    return price_event(event, book).cost_nanos


def genai_price_keys(reference: Reference, occurred_at: datetime) -> frozenset[str]:
    """The keys of the price genai-prices applies to this reference at this time."""
    _, model = get_snapshot().find_provider_model(reference.model, None, reference.provider_id, None)
    price = model.get_prices(occurred_at)
    return frozenset(key for key, value in vars(price).items() if value is not None and not key.startswith("_"))


def comparable(reference: Reference, occurred_at: datetime) -> bool:
    """genai-prices prices this model with supported keys only (an empty price is free to
    genai-prices but unpriced to us, by design: never a $0 charge)."""
    keys = genai_price_keys(reference, occurred_at)
    return bool(keys) and keys <= SUPPORTED_GENAI_KEYS


def _equals(rule: MatchRule) -> list[str]:
    if rule.equals is not None:
        return [rule.equals]
    return [name for child in rule.any_of or () for name in _equals(child)]


@cache
def references() -> tuple[Reference, ...]:
    """Every name the default book's models answer to exactly (or the model id), with its
    provider, that genai-prices finds."""
    found = []
    for provider in genai_prices_book().providers:
        for model in provider.models:
            for name in _equals(model.match) or [model.model_id]:
                reference = Reference(provider.provider_id, name)
                try:
                    genai_price_keys(reference, AT)
                except LookupError:
                    continue
                found.append(reference)
    return tuple(found)


# 1. The default book charges what genai-prices computes.


def test_every_comparable_model_of_the_default_book_costs_what_genai_prices_computes():
    book = genai_prices_book()
    compared: set[Reference] = set()
    differences = []
    for occurred_at in (datetime(2024, 3, 1, 3, tzinfo=UTC), AT, TODAY):
        for reference in references():
            if not comparable(reference, occurred_at):
                continue
            for usage in FIXED_USAGES:
                theirs = genai_cost_nanos(reference, usage, occurred_at)
                ours = our_cost_nanos(book, reference.model, reference.provider_id, usage, occurred_at)
                if ours != theirs:
                    differences.append((reference, occurred_at.isoformat(), usage, ours, theirs))
            compared.add(reference)
    assert differences == []
    assert len(compared) > COMPARED_MODELS_MIN


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    """Prompts up to 2M tokens (tiers start at 128k-272k), with parts within their totals."""
    prompt = draw(st.one_of(st.integers(0, 2_000_000), st.sampled_from(TIER_EDGES)))
    cache_read = draw(st.integers(0, prompt))
    cache_write = draw(st.integers(0, prompt - cache_read))
    completion = draw(st.integers(0, 200_000))
    reasoning = draw(st.integers(0, completion))
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


@settings(max_examples=300, deadline=None)
@given(
    reference=st.deferred(lambda: st.sampled_from(references())),
    usage=usages(),
    occurred_at=st.datetimes(min_value=datetime(2023, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
)
def test_price_event_equals_genai_prices_rounded_half_even_to_the_nano(reference, usage, occurred_at):
    assume(comparable(reference, occurred_at))
    try:
        theirs = genai_cost_nanos(reference, usage, occurred_at)
    except ValueError:  # genai-prices refuses this usage for this model
        assume(False)
    ours = our_cost_nanos(genai_prices_book(), reference.model, reference.provider_id, usage, occurred_at)
    assert ours == theirs


# 2. Books from genai-prices and from LiteLLM agree where their sources agree.


def _effective(rates: TokenRates) -> tuple[RateValue, ...]:
    """The rate each token kind is charged at: a missing input, output or request price
    charges nothing, cache tokens without a cache rate are input, reasoning tokens without
    a reasoning rate are output."""
    zero = Decimal(0)
    input_rate = rates.input_mtok if rates.input_mtok is not None else zero
    output_rate = rates.output_mtok if rates.output_mtok is not None else zero
    return (
        input_rate,
        output_rate,
        rates.cache_read_mtok if rates.cache_read_mtok is not None else input_rate,
        rates.cache_write_mtok if rates.cache_write_mtok is not None else input_rate,
        rates.reasoning_mtok if rates.reasoning_mtok is not None else output_rate,
        rates.request_usd if rates.request_usd is not None else zero,
    )


AGREEMENT_USAGES = (
    TokenUsage(prompt_tokens=1_000, completion_tokens=500),
    TokenUsage(prompt_tokens=12_345, completion_tokens=6_789, cache_read_tokens=4_000, cache_write_tokens=1_000),
    TokenUsage(prompt_tokens=50_000, completion_tokens=20_000, cache_read_tokens=10_000, reasoning_tokens=15_000),
    TokenUsage(
        prompt_tokens=300_000,
        completion_tokens=8_000,
        cache_read_tokens=100_000,
        cache_write_tokens=20_000,
        reasoning_tokens=2_000,
    ),
)


def test_genai_prices_and_litellm_books_agree_to_the_nano_where_their_source_prices_agree(record_property):
    litellm_book = price_book_from_litellm_json(SAMPLE_PATH.read_text())
    genai_book = genai_prices_book()
    for occurred_at in (AT, TODAY):
        agreed, disagreed, not_in_genai = [], [], []
        tiered_agreed = False
        for provider in litellm_book.providers:
            for model in provider.models:
                key, provider_id = model.model_id, provider.provider_id
                bare = key.removeprefix(provider_id + "/")
                genai_ref: tuple[str, str | None] = (bare, provider_id)
                if genai_book.index.resolve(*genai_ref) is None:
                    genai_ref = (bare, None)
                resolved = genai_book.index.resolve(*genai_ref)
                if resolved is None:
                    not_in_genai.append(key)
                    continue
                ours = model.rates_at(occurred_at)
                if _effective(ours) != _effective(resolved.rates_at(occurred_at)):
                    disagreed.append(f"{provider_id}:{key}")
                    continue
                for usage in AGREEMENT_USAGES:
                    from_litellm = our_cost_nanos(litellm_book, key, provider_id, usage, occurred_at)
                    from_genai = our_cost_nanos(genai_book, *genai_ref, usage, occurred_at)
                    assert from_litellm == from_genai, (key, genai_ref, usage, occurred_at)
                agreed.append(key)
                tiered_agreed = tiered_agreed or any(not isinstance(rate, Decimal) for rate in _effective(ours))
        record_property(f"disagreed_{occurred_at.date()}", ", ".join(disagreed))
        record_property(f"not_in_genai_{occurred_at.date()}", ", ".join(not_in_genai))
        print(f"{occurred_at.date()}: {len(agreed)} agree; sources differ for {disagreed}; not in genai {not_in_genai}")
        assert len(agreed) >= AGREEING_MODELS_MIN
        assert tiered_agreed, "no tiered model agreed, so the >200k tier was never compared"
        assert {"gpt-4o", "gemini/gemini-2.5-pro", "azure/gpt-4o"} <= set(agreed)
