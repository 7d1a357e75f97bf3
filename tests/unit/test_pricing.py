"""Pricing rules on a small hand-made book: exact costs, tiers, periods, overrides,
unpriced models, text-only events and reported costs."""

import json
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest
from pydantic import ValidationError

from ledger.domain.errors import InvalidPriceBook, InvalidUsage, UnpricedModel
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.prices import (
    MatchRule,
    ModelPrices,
    PriceBook,
    PriceOverride,
    PricePeriod,
    ProviderPrices,
    Tier,
    TieredRate,
    TokenRates,
    load_price_book,
)
from ledger.domain.pricing import cost_breakdown, price_event

AT = datetime(2025, 11, 3, 12, tzinfo=UTC)


def book(**extra) -> PriceBook:
    return PriceBook(
        source="test",
        providers=(
            ProviderPrices(
                provider_id="acme",
                model_match=MatchRule(starts_with="acme-"),
                models=(
                    ModelPrices(
                        model_id="acme-large",
                        match=MatchRule(
                            any_of=(MatchRule(equals="acme-large"), MatchRule(regex=r"^acme-large-\d{4}-\d{2}-\d{2}$"))
                        ),
                        periods=(
                            PricePeriod(
                                rates=TokenRates(
                                    input_mtok=Decimal("2.5"),
                                    output_mtok=Decimal("10"),
                                    cache_read_mtok=Decimal("1.25"),
                                    cache_write_mtok=Decimal("3.125"),
                                    reasoning_mtok=Decimal("12"),
                                )
                            ),
                            PricePeriod(
                                starts_on=date(2026, 1, 1),
                                rates=TokenRates(input_mtok=Decimal("2"), output_mtok=Decimal("8")),
                            ),
                        ),
                    ),
                    ModelPrices(
                        model_id="acme-long",
                        match=MatchRule(equals="acme-long"),
                        periods=(
                            PricePeriod(
                                rates=TokenRates(
                                    input_mtok=TieredRate(
                                        base=Decimal("1.25"), tiers=(Tier(start=200_000, price=Decimal("2.5")),)
                                    ),
                                    output_mtok=TieredRate(
                                        base=Decimal("10"), tiers=(Tier(start=200_000, price=Decimal("15")),)
                                    ),
                                )
                            ),
                        ),
                    ),
                    ModelPrices(
                        model_id="acme-offpeak",
                        match=MatchRule(equals="acme-offpeak"),
                        periods=(
                            PricePeriod(rates=TokenRates(input_mtok=Decimal("1"), output_mtok=Decimal("1"))),
                            PricePeriod(
                                utc_time_from=time(16, 30),
                                utc_time_to=time(0, 30),
                                rates=TokenRates(input_mtok=Decimal("0.5"), output_mtok=Decimal("0.5")),
                            ),
                        ),
                    ),
                    ModelPrices(
                        model_id="acme-free",
                        match=MatchRule(equals="acme-free"),
                        periods=(PricePeriod(rates=TokenRates(input_mtok=Decimal(0), output_mtok=Decimal(0))),),
                    ),
                    ModelPrices(
                        model_id="acme-image",
                        match=MatchRule(equals="acme-image"),
                        periods=(PricePeriod(rates=TokenRates()),),
                    ),
                ),
            ),
        ),
        **extra,
    )


def event(model="acme-large", usage=None, **fields) -> UsageEvent:
    return UsageEvent(
        event_id="e1",
        occurred_at=fields.pop("occurred_at", AT),
        model=model,
        team_id="t1",
        usage=usage
        if usage is not None or "input_text" in fields or "reported_cost" in fields
        else TokenUsage(prompt_tokens=1000, completion_tokens=100),
        **fields,
    )


def test_cost_is_exact_and_the_breakdown_adds_up():
    usage = TokenUsage(
        prompt_tokens=10_000,
        completion_tokens=2_000,
        cache_read_tokens=4_000,
        cache_write_tokens=1_000,
        reasoning_tokens=500,
    )
    entry = price_event(event(usage=usage), book())
    b = entry.breakdown
    assert b is not None
    # per million: input 5,000 x 2.5, cache read 4,000 x 1.25, cache write 1,000 x 3.125,
    # output 1,500 x 10, reasoning 500 x 12
    assert (b.input_nanos, b.cache_read_nanos, b.cache_write_nanos, b.output_nanos, b.reasoning_nanos) == (
        12_500_000,
        5_000_000,
        3_125_000,
        15_000_000,
        6_000_000,
    )
    assert entry.cost_nanos == 41_625_000 == b.total_nanos
    assert entry.cost_source == "price_book"
    assert entry.price_book_version == book().version
    assert entry.priced_as == "acme/acme-large"
    assert entry.scope_keys == ("global:*", "team:t1")


def test_a_cost_is_rounded_once_per_event_half_to_even():
    # 0.0025 USD per million tokens: 1 token is 2.5 nanos -> 2, 3 tokens are 7.5 -> 8.
    rates = TokenRates(input_mtok=Decimal("0.0025"), output_mtok=Decimal("0.0025"))
    assert cost_breakdown(rates, TokenUsage(prompt_tokens=1)).total_nanos == 2
    assert cost_breakdown(rates, TokenUsage(prompt_tokens=3)).total_nanos == 8
    # 1 input + 1 output token: 5 nanos exactly, though each part alone would round to 2.
    assert cost_breakdown(rates, TokenUsage(prompt_tokens=1, completion_tokens=1)).total_nanos == 5


def test_a_tier_reprices_every_token_once_input_passes_its_start():
    rates = book().index.resolve("acme-long").rates_at(AT)  # type: ignore[union-attr]
    below = cost_breakdown(rates, TokenUsage(prompt_tokens=200_000, completion_tokens=1_000))
    above = cost_breakdown(rates, TokenUsage(prompt_tokens=200_001, completion_tokens=1_000))
    assert (below.input_nanos, below.output_nanos) == (250_000_000, 10_000_000)
    assert (above.input_nanos, above.output_nanos) == (500_002_500, 15_000_000)


def test_the_price_at_the_events_own_time_applies():
    before = price_event(event(occurred_at=datetime(2025, 12, 31, 23, 59, tzinfo=UTC)), book())
    after = price_event(event(occurred_at=datetime(2026, 1, 1, 0, 0, tzinfo=UTC)), book())
    assert (before.cost_nanos, after.cost_nanos) == (3_500_000, 2_800_000)


def test_a_daily_off_peak_window_may_cross_midnight():
    costs = {
        hour: price_event(event("acme-offpeak", occurred_at=datetime(2025, 11, 3, hour, tzinfo=UTC)), book()).cost_nanos
        for hour in (0, 12, 17)
    }
    assert costs == {0: 550_000, 12: 1_100_000, 17: 550_000}


def test_models_resolve_by_rule_by_dated_name_and_by_provider_prefix():
    index = book().index
    assert index.resolve("ACME-LARGE").model_id == "acme-large"  # type: ignore[union-attr]
    assert index.resolve("acme-large-2025-01-01").model_id == "acme-large"  # type: ignore[union-attr]
    assert index.resolve("acme-large-20250101").model_id == "acme-large"  # type: ignore[union-attr]  # compact date
    assert index.resolve("acme/acme-large").model_id == "acme-large"  # type: ignore[union-attr]
    assert index.resolve("acme-large", "acme").model_id == "acme-large"  # type: ignore[union-attr]
    assert index.resolve("acme-large", "other-provider") is None
    assert index.resolve("unknown-model") is None


def test_an_unknown_model_is_unpriced_never_free():
    with pytest.raises(UnpricedModel, match="no price for model 'mystery'") as info:
        price_event(event("mystery"), book())
    assert info.value.reason == "unpriced"


def test_a_model_with_no_token_prices_is_unpriced():
    with pytest.raises(UnpricedModel):
        price_event(event("acme-image"), book())


def test_a_model_priced_at_zero_is_charged_zero():
    assert price_event(event("acme-free"), book()).cost_nanos == 0


def test_an_override_wins_over_the_book():
    negotiated = book().with_overrides(
        (
            PriceOverride(
                model="acme-large",
                rates=TokenRates(input_mtok=Decimal(1), output_mtok=Decimal(1)),
                note="contract 2025",
            ),
        )
    )
    assert negotiated.version != book().version
    assert price_event(event(), negotiated).cost_nanos == 1_100_000
    private = book().with_overrides((PriceOverride(model="in-house-7b", rates=TokenRates(input_mtok=Decimal("0.1"))),))
    assert price_event(event("in-house-7b"), private).priced_as == "-/in-house-7b"


def test_text_only_events_are_counted_and_marked_estimated():
    entry = price_event(
        event(usage=None, input_text="hello " * 10, output_text="world"),
        book(),
        count_tokens=lambda text: len(text.split()),
    )
    assert (entry.usage.prompt_tokens, entry.usage.completion_tokens, entry.tokens_estimated) == (10, 1, True)
    with pytest.raises(InvalidUsage, match="no token counter"):
        price_event(event(usage=None, input_text="hello"), book())


def test_a_reported_cost_is_used_only_when_trusted():
    reported = event(usage=TokenUsage(prompt_tokens=1000, completion_tokens=100), reported_cost=Decimal("0.0021"))
    trusted = price_event(reported, book(), trust_reported_cost=True)
    assert (trusted.cost_nanos, trusted.cost_source, trusted.breakdown) == (2_100_000, "reported", None)
    repriced = price_event(reported, book())
    assert (repriced.cost_nanos, repriced.cost_source) == (3_500_000, "price_book")
    with pytest.raises(InvalidUsage, match="reported costs are not trusted"):
        price_event(event(usage=None, reported_cost=Decimal("0.01")), book())


def test_the_version_is_a_content_hash_checked_on_load():
    a, b = book(), book()
    assert a.version == b.version
    assert a.version.startswith("sha256:")
    assert load_price_book(a.model_dump_json()) == a
    tampered = a.model_dump(mode="json")
    tampered["providers"][0]["models"][0]["periods"][0]["rates"]["input_mtok"] = "0.01"
    with pytest.raises(InvalidPriceBook, match="does not match"):
        load_price_book(json.dumps(tampered))


def test_equal_rates_spelled_differently_hash_equal():
    one = TokenRates(input_mtok=Decimal("1.50"))
    other = TokenRates(input_mtok=Decimal("1.5"))
    assert one == other


@pytest.mark.parametrize(
    "bad",
    [Decimal("-1"), Decimal("NaN"), Decimal("0.0000000000000000001"), Decimal("1000001")],
)
def test_implausible_rates_are_refused(bad):
    with pytest.raises(ValidationError):
        TokenRates(input_mtok=bad)


def test_a_match_rule_sets_exactly_one_field():
    with pytest.raises(ValidationError, match="exactly one"):
        MatchRule(equals="a", contains="b")
    with pytest.raises(ValidationError, match="bad regex"):
        MatchRule(regex="(")
