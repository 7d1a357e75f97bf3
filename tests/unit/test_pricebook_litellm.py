"""Price books imported from LiteLLM's price file: field mapping, tiers, provider prefixes,
skipped entries, bad input, content-hash versions and overrides.

``tests/data/litellm_prices_sample.json`` holds 40 entries cut verbatim (same text, same
order) from ``model_prices_and_context_window_backup.json`` of LiteLLM 1.106.12.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.domain.errors import InvalidPriceBook
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.prices import MatchRule, PriceOverride, Tier, TieredRate, TokenRates
from ledger.domain.pricing import price_event
from ledger.pricebooks.litellm import (
    DEFAULT_BOOK_ID,
    DEFAULT_SOURCE,
    SKIP_BAD_NAME,
    SKIP_BAD_PROVIDER,
    SKIP_IMPRECISE_PRICE,
    SKIP_NO_TOKEN_PRICE,
    SKIP_NON_NUMERIC_PRICE,
    SKIP_NOT_AN_OBJECT,
    SKIP_SAMPLE_SPEC,
    TIER_WITHOUT_BASE,
    import_litellm_prices,
    price_book_from_litellm_json,
)

SAMPLE_PATH = Path(__file__).parents[1] / "data" / "litellm_prices_sample.json"
SAMPLE = SAMPLE_PATH.read_text()
AT = datetime(2025, 11, 1, 12, tzinfo=UTC)


def litellm_json(**entries: dict[str, object]) -> str:
    """A LiteLLM price file as text; Decimal prices are written as bare JSON numbers, digit for digit."""
    text = json.dumps(entries, default=lambda value: f"@@{value}@@")
    return text.replace('"@@', "").replace('@@"', "")


def one_model_json(**prices: str) -> str:
    """A price file of one model ``m`` (provider ``acme``) with prices as raw JSON number text."""
    fields = "".join(f', "{key}": {text}' for key, text in prices.items())
    return '{"m": {"litellm_provider": "acme"' + fields + "}}"


def cost(book, model: str, provider: str | None = None, **usage: int) -> int:
    event = UsageEvent(event_id="e1", occurred_at=AT, model=model, provider=provider, usage=TokenUsage(**usage))
    return price_event(event, book).cost_nanos


def rates_of(book, model: str, provider: str | None = None) -> TokenRates:
    resolved = book.index.resolve(model, provider)
    assert resolved is not None, f"{model!r} ({provider}) not found"
    return resolved.rates_at(AT)


# Field mapping


def test_every_supported_key_maps_to_its_rate_per_million_tokens_and_request_price_is_per_request():
    text = litellm_json(
        **{
            "acme-1": {
                "litellm_provider": "acme",
                "input_cost_per_token": Decimal("2.5e-06"),
                "output_cost_per_token": Decimal("1e-05"),
                "cache_read_input_token_cost": Decimal("1.25e-07"),
                "cache_creation_input_token_cost": Decimal("3.125e-06"),
                "output_cost_per_reasoning_token": Decimal("1.2e-05"),
                "input_cost_per_request": Decimal("0.005"),
            }
        }
    )
    rates = rates_of(price_book_from_litellm_json(text), "acme-1")
    assert rates == TokenRates(
        input_mtok=Decimal("2.5"),
        output_mtok=Decimal("10"),
        cache_read_mtok=Decimal("0.125"),
        cache_write_mtok=Decimal("3.125"),
        reasoning_mtok=Decimal("12"),
        request_usd=Decimal("0.005"),
    )


def test_prices_are_scaled_exactly_in_decimal_never_through_float():
    # As floats, 3.3e-07 * 1e6 is 0.32999999999999996 and 1.1e-06 * 1e6 is 1.0999999999999999.
    text = litellm_json(
        m={
            "litellm_provider": "acme",
            "input_cost_per_token": Decimal("3.3e-07"),
            "output_cost_per_token": Decimal("1.1e-06"),
        }
    )
    rates = rates_of(price_book_from_litellm_json(text), "m")
    assert rates.input_mtok == Decimal("0.33")
    assert rates.output_mtok == Decimal("1.1")
    assert isinstance(rates.input_mtok, Decimal)
    assert isinstance(rates.output_mtok, Decimal)


def test_integer_prices_are_accepted():
    text = litellm_json(m={"litellm_provider": "acme", "input_cost_per_token": 0, "output_cost_per_token": 1})
    rates = rates_of(price_book_from_litellm_json(text), "m")
    assert rates.input_mtok == Decimal(0)
    assert rates.output_mtok == Decimal(1_000_000)


def test_sample_prices_match_the_litellm_source_text():
    book = price_book_from_litellm_json(SAMPLE)
    assert rates_of(book, "gpt-4o", "openai") == TokenRates(
        input_mtok=Decimal("2.5"), output_mtok=Decimal("10"), cache_read_mtok=Decimal("1.25")
    )
    assert rates_of(book, "claude-sonnet-4-5", "anthropic") == TokenRates(
        input_mtok=Decimal("3"),
        output_mtok=Decimal("15"),
        cache_read_mtok=Decimal("0.3"),
        cache_write_mtok=Decimal("3.75"),
    )
    assert rates_of(book, "perplexity/sonar-deep-research").reasoning_mtok == Decimal("3")
    assert rates_of(book, "perplexity/sonar-small-online").request_usd == Decimal("0.005")


def test_cache_write_and_reasoning_tokens_are_charged_at_their_own_rates():
    book = price_book_from_litellm_json(SAMPLE)
    # claude-sonnet-4-5: 5,000 input x $3 + 4,000 cache read x $0.30 + 1,000 cache write
    # x $3.75 + 2,000 output x $15 (no reasoning rate: reasoning is output), per million.
    assert cost(
        book,
        "claude-sonnet-4-5",
        "anthropic",
        prompt_tokens=10_000,
        cache_read_tokens=4_000,
        cache_write_tokens=1_000,
        completion_tokens=2_000,
        reasoning_tokens=500,
    ) == (15_000_000 + 1_200_000 + 3_750_000 + 30_000_000)
    # sonar-deep-research: 1,000 input x $2 + 600 output x $8 + 400 reasoning x $3.
    assert cost(
        book, "perplexity/sonar-deep-research", prompt_tokens=1_000, completion_tokens=1_000, reasoning_tokens=400
    ) == (2_000_000 + 4_800_000 + 1_200_000)


def test_a_per_request_price_is_charged_once_per_event():
    book = price_book_from_litellm_json(SAMPLE)
    # sonar-small-online: $0 input, $0.28 per million output tokens, $0.005 per request.
    assert cost(book, "perplexity/sonar-small-online", prompt_tokens=100, completion_tokens=1_000) == (
        280_000 + 5_000_000
    )


# Tiers


def test_above_n_k_tokens_keys_become_tiers_starting_at_n_thousand_prompt_tokens():
    rates = rates_of(price_book_from_litellm_json(SAMPLE), "gemini/gemini-2.5-pro")
    assert rates.input_mtok == TieredRate(base=Decimal("1.25"), tiers=(Tier(start=200_000, price=Decimal("2.5")),))
    assert rates.output_mtok == TieredRate(base=Decimal("10"), tiers=(Tier(start=200_000, price=Decimal("15")),))
    assert rates.cache_read_mtok == TieredRate(
        base=Decimal("0.125"), tiers=(Tier(start=200_000, price=Decimal("0.25")),)
    )


def test_several_tiers_are_sorted_by_their_start():
    text = litellm_json(
        m={
            "litellm_provider": "acme",
            "input_cost_per_token_above_256k_tokens": Decimal("4e-06"),
            "input_cost_per_token": Decimal("1e-06"),
            "input_cost_per_token_above_128k_tokens": Decimal("2e-06"),
            "output_cost_per_token": Decimal("5e-06"),
        }
    )
    rates = rates_of(price_book_from_litellm_json(text), "m")
    assert rates.input_mtok == TieredRate(
        base=Decimal("1"),
        tiers=(Tier(start=128_000, price=Decimal("2")), Tier(start=256_000, price=Decimal("4"))),
    )
    assert rates.output_mtok == Decimal("5")


def test_tiered_price_applies_to_every_token_above_200k_prompt_tokens():
    book = price_book_from_litellm_json(SAMPLE)
    # At 200,000 prompt tokens the base rate ($1.25) applies; one more token reprices all of them at $2.50.
    assert cost(book, "gemini/gemini-2.5-pro", prompt_tokens=200_000) == 250_000_000
    assert cost(book, "gemini/gemini-2.5-pro", prompt_tokens=200_001) == 500_002_500
    # The output rate follows the prompt size too: $10 below, $15 above.
    assert cost(book, "gemini/gemini-2.5-pro", prompt_tokens=1, completion_tokens=1_000) == 10_001_250
    assert cost(book, "gemini/gemini-2.5-pro", prompt_tokens=200_001, completion_tokens=1_000) == (
        500_002_500 + 15_000_000
    )


def test_a_tier_without_its_base_price_is_left_out_and_counted():
    # The real gemini-2.5-pro entry has a cache-write tier but no cache-write price.
    book, report = import_litellm_prices(SAMPLE)
    assert rates_of(book, "gemini-2.5-pro", "vertex_ai-language-models").cache_write_mtok is None
    assert report.ignored_price_keys[TIER_WITHOUT_BASE] == 1


# What is left out


def test_service_tiers_one_hour_cache_writes_and_non_token_prices_are_ignored_and_counted():
    ignored = {
        "input_cost_per_token_batches": Decimal("1e-06"),
        "output_cost_per_token_flex": Decimal("1e-06"),
        "input_cost_per_token_priority": Decimal("1e-06"),
        "cache_read_input_token_cost_decisions": Decimal("1e-06"),
        "output_cost_per_token_ultrafast": Decimal("1e-06"),
        "input_cost_per_token_balanced": Decimal("1e-06"),
        "input_cost_per_token_above_200k_tokens_priority": Decimal("9e-06"),
        "cache_creation_input_token_cost_above_1hr": Decimal("6e-06"),
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens": Decimal("9e-06"),
        "input_cost_per_audio_token": Decimal("1e-06"),
        "output_cost_per_image": Decimal("0.04"),
        "input_cost_per_character": Decimal("1e-06"),
        "output_cost_per_second": Decimal("0.01"),
        "input_cost_per_query": Decimal("0.01"),
        "output_cost_per_video_per_second": Decimal("0.1"),
    }
    text = litellm_json(
        m={
            "litellm_provider": "acme",
            "input_cost_per_token": Decimal("2e-06"),
            "output_cost_per_token": Decimal("8e-06"),
            "search_context_cost_per_query": {"search_context_size_low": Decimal("0.01")},
            **ignored,
        }
    )
    book, report = import_litellm_prices(text)
    assert rates_of(book, "m") == TokenRates(input_mtok=Decimal("2"), output_mtok=Decimal("8"))
    assert report.ignored_price_keys == {key: 1 for key in [*ignored, "search_context_cost_per_query"]}


def test_entries_without_input_output_or_request_price_are_skipped_and_reported():
    book, report = import_litellm_prices(SAMPLE)
    assert report.skipped == {SKIP_SAMPLE_SPEC: ("sample_spec",), SKIP_NO_TOKEN_PRICE: ("tts-1", "whisper-1")}
    assert report.models_imported == 37
    assert report.skipped_count == 3
    assert book.index.resolve("tts-1") is None
    assert book.index.resolve("sample_spec") is None
    assert report.summary() == ("imported 37 models from 11 providers; skipped 3 (no_token_price 2, sample_spec 1)")


def test_entries_that_cannot_be_read_are_skipped_by_reason():
    text = litellm_json(
        good={"litellm_provider": "acme", "input_cost_per_token": Decimal("1e-06")},
        quoted={"litellm_provider": "acme", "input_cost_per_token": "0.000001"},
        boolean={"litellm_provider": "acme", "output_cost_per_token": True},
        null_price={"litellm_provider": "acme", "input_cost_per_token": None},
        nested_price={"litellm_provider": "acme", "input_cost_per_token": {"value": Decimal("1e-06")}},
        no_provider={"input_cost_per_token": Decimal("1e-06")},
        numeric_provider={"litellm_provider": 7, "input_cost_per_token": Decimal("1e-06")},
        image_only={"litellm_provider": "acme", "output_cost_per_image": Decimal("0.04")},
        **{"x" * 257: {"litellm_provider": "acme", "input_cost_per_token": Decimal("1e-06")}},
    )
    text = text[:-1] + ', "a_list": [1, 2]}'
    book, report = import_litellm_prices(text)
    assert report.models_imported == 1
    assert report.skipped == {
        SKIP_NON_NUMERIC_PRICE: ("quoted", "boolean", "null_price", "nested_price"),
        SKIP_BAD_PROVIDER: ("no_provider", "numeric_provider"),
        SKIP_NO_TOKEN_PRICE: ("image_only",),
        SKIP_BAD_NAME: ("x" * 257,),
        SKIP_NOT_AN_OBJECT: ("a_list",),
    }
    assert [model.model_id for provider in book.providers for model in provider.models] == ["good"]


# Providers and model names


def test_models_group_into_one_provider_per_litellm_provider_in_first_seen_order():
    book = price_book_from_litellm_json(SAMPLE)
    assert [provider.provider_id for provider in book.providers] == [
        "bedrock",
        "bedrock_converse",
        "azure",
        "anthropic",
        "deepseek",
        "vertex_ai-language-models",
        "gemini",
        "openai",
        "mistral",
        "perplexity",
        "vertex_ai",
    ]
    azure = next(provider for provider in book.providers if provider.provider_id == "azure")
    assert [model.model_id for model in azure.models] == [
        "azure/gpt-4o",
        "azure/gpt-4o-mini",
        "azure/standard/1024-x-1024/dall-e-3",
        "azure/text-embedding-3-small",
    ]
    assert all(provider.model_match is None and provider.provider_match is None for provider in book.providers)
    assert all(provider.fallback_providers == () for provider in book.providers)


def test_a_key_under_its_providers_prefix_also_answers_to_the_bare_name():
    models = {
        model.model_id: model
        for provider in price_book_from_litellm_json(SAMPLE).providers
        for model in provider.models
    }
    assert models["azure/gpt-4o"].match == MatchRule(
        any_of=(MatchRule(equals="azure/gpt-4o"), MatchRule(equals="gpt-4o"))
    )
    assert models["gpt-4o"].match == MatchRule(equals="gpt-4o")
    # The prefix must be the entry's own provider: vertex_ai/... under vertex_ai, not under bedrock.
    assert models["vertex_ai/gemini-2.0-flash"].match == MatchRule(
        any_of=(MatchRule(equals="vertex_ai/gemini-2.0-flash"), MatchRule(equals="gemini-2.0-flash"))
    )
    assert models["anthropic.claude-3-5-haiku-20241022-v1:0"].match == MatchRule(
        equals="anthropic.claude-3-5-haiku-20241022-v1:0"
    )


def test_azure_price_is_found_by_prefixed_name_or_by_bare_name_with_azure_as_provider():
    book = price_book_from_litellm_json(SAMPLE)
    for model, provider in [
        ("azure/gpt-4o", None),
        ("gpt-4o", "azure"),
        ("AZURE/GPT-4O", None),
        ("azure/gpt-4o", "azure"),
    ]:
        resolved = book.index.resolve(model, provider)
        assert resolved is not None
        assert (resolved.provider_id, resolved.model_id) == ("azure", "azure/gpt-4o")
    openai = book.index.resolve("gpt-4o", "openai")
    assert openai is not None
    assert (openai.provider_id, openai.model_id) == ("openai", "gpt-4o")
    # Azure's embedding price differs from OpenAI's, so the provider decides the charge.
    assert cost(book, "text-embedding-3-small", "azure", prompt_tokens=1_000_000) == 22_000_000
    assert cost(book, "text-embedding-3-small", "openai", prompt_tokens=1_000_000) == 20_000_000


def test_a_bare_name_without_provider_finds_the_entry_with_exactly_that_key():
    book = price_book_from_litellm_json(SAMPLE)
    resolved = book.index.resolve("text-embedding-3-small")
    assert resolved is not None
    assert (resolved.provider_id, resolved.model_id) == ("openai", "text-embedding-3-small")


# Bad input


@pytest.mark.parametrize("text", ["", "{", "{'gpt-4o': {}}", b"\xff\xfe\x00", "[1,]"])
def test_text_that_is_not_json_is_refused(text):
    with pytest.raises(InvalidPriceBook, match="not valid JSON"):
        price_book_from_litellm_json(text)


@pytest.mark.parametrize("text", ["[]", "42", '"gpt-4o"', "null", "1.5"])
def test_a_top_level_value_that_is_not_an_object_is_refused(text):
    with pytest.raises(InvalidPriceBook, match="must be a JSON object"):
        price_book_from_litellm_json(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1e-06", "must not be negative"),
        ("NaN", "must be finite"),
        ("Infinity", "must be finite"),
        ("-Infinity", "must be finite"),
        ("1.5000999999999998e-07", "more than 12 decimal places"),
        ("0.0000000000001", "more than 12 decimal places"),
        ("1.000001", "not plausible"),
    ],
)
def test_a_negative_non_finite_implausible_or_too_precise_price_is_refused(value, message):
    text = one_model_json(output_cost_per_token="1e-06", input_cost_per_token=value)
    with pytest.raises(InvalidPriceBook, match=message) as error:
        price_book_from_litellm_json(text)
    assert "'m', input_cost_per_token" in str(error.value)


def test_a_bad_tier_price_is_refused_like_a_base_price():
    text = one_model_json(input_cost_per_token="1e-06", input_cost_per_token_above_200k_tokens="-2e-06")
    with pytest.raises(InvalidPriceBook, match="input_cost_per_token_above_200k_tokens: price must not be negative"):
        price_book_from_litellm_json(text)


def test_twelve_decimal_places_per_token_is_the_finest_price_accepted():
    text = one_model_json(input_cost_per_token="1.23456789012e-01", output_cost_per_token="1e-12")
    rates = rates_of(price_book_from_litellm_json(text), "m")
    assert rates.input_mtok == Decimal("123456.789012")
    assert rates.output_mtok == Decimal("0.000001")


def test_float_artefacts_can_be_skipped_and_reported_instead_of_refused():
    # Real databricks and novita entries carry prices like these.
    text = (
        '{"databricks/claude": {"litellm_provider": "databricks", "input_cost_per_token": 0.000015000020000000002},'
        ' "gpt-4o": {"litellm_provider": "openai", "input_cost_per_token": 2.5e-06}}'
    )
    book, report = import_litellm_prices(text, skip_imprecise=True)
    assert report.skipped == {SKIP_IMPRECISE_PRICE: ("databricks/claude",)}
    assert [provider.provider_id for provider in book.providers] == ["openai"]


# Versions and overrides


def test_the_book_version_is_a_content_hash_and_reimporting_the_same_text_gives_the_same_version():
    first = price_book_from_litellm_json(SAMPLE)
    again = price_book_from_litellm_json(SAMPLE.encode())
    assert first.version.startswith("sha256:")
    assert len(first.version) == len("sha256:") + 64
    assert again.version == first.version
    assert (first.book_id, first.source) == (DEFAULT_BOOK_ID, DEFAULT_SOURCE)
    changed = price_book_from_litellm_json(
        SAMPLE.replace('"input_cost_per_token": 2.5e-06', '"input_cost_per_token": 2.4e-06', 1)
    )
    assert changed.version != first.version


def test_book_id_and_source_are_part_of_the_version():
    default = price_book_from_litellm_json(SAMPLE)
    named = price_book_from_litellm_json(SAMPLE, book_id="litellm-1.106.12", source="LiteLLM 1.106.12")
    assert (named.book_id, named.source) == ("litellm-1.106.12", "LiteLLM 1.106.12")
    assert named.version != default.version


def test_an_override_put_in_front_wins_over_the_imported_price():
    book = price_book_from_litellm_json(SAMPLE)
    negotiated = PriceOverride(
        model="gpt-4o", rates=TokenRates(input_mtok=Decimal("2"), output_mtok=Decimal("8")), note="contract 2025"
    )
    with_override = book.with_overrides((negotiated,))
    assert with_override.version != book.version
    assert cost(book, "gpt-4o", "openai", prompt_tokens=1_000_000) == 2_500_000_000
    assert cost(with_override, "gpt-4o", "openai", prompt_tokens=1_000_000) == 2_000_000_000
    assert cost(with_override, "gpt-4o", prompt_tokens=1_000_000) == 2_000_000_000
    # Overrides may also be given at import, with the same result.
    imported_with_override = price_book_from_litellm_json(SAMPLE, overrides=(negotiated,))
    assert imported_with_override.version == with_override.version
