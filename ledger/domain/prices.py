"""Price books: versioned, content-hashed price tables, and how a model name finds its price.

A rate is an exact Decimal in USD per million tokens (per request for ``request_usd``),
with at most 18 decimal places. Costs are computed from the rates in integer arithmetic
(see ``ledger.domain.pricing``); a book never holds a float.

Model lookup follows genai-prices (the default source) so the same model reference finds
the same price: overrides by exact name first, then the provider (named, taken from a
``provider/model`` prefix, or matched by model name), then that provider's models and its
fallback providers, and last every provider's models in book order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ledger.domain.errors import InvalidPriceBook

RATE_DECIMAL_PLACES_MAX = 18
RATE_USD_MAX = Decimal(1_000_000)  # per million tokens or per request
BOOK_PROVIDERS_MAX = 1_000
PROVIDER_MODELS_MAX = 20_000
OVERRIDES_MAX = 10_000
MATCH_DEPTH_MAX = 8

BOOK_CONFIG = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _canonical_rate(value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0:
        raise ValueError("a rate must be a finite, non-negative decimal")
    if value > RATE_USD_MAX:
        raise ValueError(f"a rate above {RATE_USD_MAX} USD is not plausible")
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > RATE_DECIMAL_PLACES_MAX:
        raise ValueError(f"a rate may have at most {RATE_DECIMAL_PLACES_MAX} decimal places: {value}")
    # One spelling per value, so equal books hash equal: 1.50 and 1.5 are the same rate.
    return Decimal(format(value.normalize(), "f"))


Rate = Annotated[Decimal, AfterValidator(_canonical_rate)]


class Tier(BaseModel):
    """From ``start`` input tokens on (strictly more than), ``price`` applies to all tokens."""

    model_config = BOOK_CONFIG

    start: int = Field(ge=0)
    price: Rate


class TieredRate(BaseModel):
    """A rate that changes once the call's input tokens pass a threshold (the cliff model
    that Anthropic, Google and OpenAI use: crossing a tier reprices every token)."""

    model_config = BOOK_CONFIG

    base: Rate
    tiers: tuple[Tier, ...] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _ascending(self) -> Self:
        starts = [tier.start for tier in self.tiers]
        if starts != sorted(starts):
            raise ValueError("tiers must be in ascending order of start")
        return self

    def at(self, input_tokens: int) -> Decimal:
        """The rate for a call with this many input tokens."""
        for tier in reversed(self.tiers):
            if input_tokens > tier.start:
                return tier.price
        return self.base


RateValue = Rate | TieredRate


class TokenRates(BaseModel):
    """What one model costs per token kind. A missing cache rate bills those tokens as
    input, a missing reasoning rate bills them as output (as genai-prices does)."""

    model_config = BOOK_CONFIG

    input_mtok: RateValue | None = None
    output_mtok: RateValue | None = None
    cache_read_mtok: RateValue | None = None
    cache_write_mtok: RateValue | None = None
    reasoning_mtok: RateValue | None = None
    request_usd: Rate | None = None

    @property
    def is_priced(self) -> bool:
        """A model with no input, output or request price is unpriced, never free."""
        return self.input_mtok is not None or self.output_mtok is not None or self.request_usd is not None


class PricePeriod(BaseModel):
    """Rates in force from ``starts_on`` (UTC date), optionally only during a daily UTC
    time window (off-peak prices). Of a model's periods the last active one applies."""

    model_config = BOOK_CONFIG

    starts_on: date | None = None
    utc_time_from: time | None = None
    utc_time_to: time | None = None
    rates: TokenRates

    @model_validator(mode="after")
    def _window_pair(self) -> Self:
        if (self.utc_time_from is None) != (self.utc_time_to is None):
            raise ValueError("utc_time_from and utc_time_to go together")
        return self

    def active_at(self, occurred_at: datetime) -> bool:
        moment = occurred_at.astimezone(UTC)
        if self.starts_on is not None and moment.date() < self.starts_on:
            return False
        if self.utc_time_from is not None and self.utc_time_to is not None:
            now = moment.time()
            if self.utc_time_to < self.utc_time_from:
                return now >= self.utc_time_from or now < self.utc_time_to
            return self.utc_time_from <= now < self.utc_time_to
        return True


class MatchRule(BaseModel):
    """Case-insensitive match of a model or provider reference; exactly one field set."""

    model_config = BOOK_CONFIG

    equals: str | None = None
    starts_with: str | None = None
    ends_with: str | None = None
    contains: str | None = None
    regex: str | None = None
    any_of: tuple[MatchRule, ...] | None = None
    all_of: tuple[MatchRule, ...] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        set_fields = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(set_fields) != 1:
            raise ValueError(f"a match rule sets exactly one field, got {set_fields or 'none'}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"bad regex {self.regex!r}: {exc}") from exc
        if self._depth() > MATCH_DEPTH_MAX:
            raise ValueError(f"match rules nest deeper than {MATCH_DEPTH_MAX}")
        return self

    def _depth(self) -> int:
        children = self.any_of or self.all_of or ()
        return 1 + max((child._depth() for child in children), default=0)

    def matches(self, reference: str) -> bool:
        """Whether ``reference`` (already lower-cased) matches."""
        if self.equals is not None:
            return reference == self.equals.lower()
        if self.starts_with is not None:
            return reference.startswith(self.starts_with.lower())
        if self.ends_with is not None:
            return reference.endswith(self.ends_with.lower())
        if self.contains is not None:
            return self.contains.lower() in reference
        if self.regex is not None:
            return re.search(self.regex, reference) is not None
        if self.any_of is not None:
            return any(rule.matches(reference) for rule in self.any_of)
        assert self.all_of is not None
        return all(rule.matches(reference) for rule in self.all_of)


class ModelPrices(BaseModel):
    """One model: what names it answers to and its price periods."""

    model_config = BOOK_CONFIG

    model_id: str = Field(min_length=1, max_length=256)
    match: MatchRule
    periods: tuple[PricePeriod, ...] = Field(min_length=1, max_length=64)

    def rates_at(self, occurred_at: datetime) -> TokenRates:
        """The rates in force at the event's own time: the last active period, else the first."""
        for period in reversed(self.periods):
            if period.active_at(occurred_at):
                return period.rates
        return self.periods[0].rates


class ProviderPrices(BaseModel):
    """A provider's models, and how a reference finds this provider."""

    model_config = BOOK_CONFIG

    provider_id: str = Field(min_length=1, max_length=128)
    model_match: MatchRule | None = None
    provider_match: MatchRule | None = None
    fallback_providers: tuple[str, ...] = ()
    models: tuple[ModelPrices, ...] = Field(default=(), max_length=PROVIDER_MODELS_MAX)


class PriceOverride(BaseModel):
    """A negotiated rate or a private model: matched by exact name before anything else."""

    model_config = BOOK_CONFIG

    model: str = Field(min_length=1, max_length=256)
    provider: str | None = Field(default=None, max_length=128)
    rates: TokenRates
    note: str | None = Field(default=None, max_length=1_000)


class PriceBook(BaseModel):
    """A versioned price table. ``version`` is the SHA-256 of the content, filled in when
    missing and checked when given, so a book's version always names its prices."""

    model_config = BOOK_CONFIG

    book_id: str = Field(default="default", min_length=1, max_length=128)
    source: str = Field(max_length=1_000)
    providers: tuple[ProviderPrices, ...] = Field(default=(), max_length=BOOK_PROVIDERS_MAX)
    overrides: tuple[PriceOverride, ...] = Field(default=(), max_length=OVERRIDES_MAX)
    version: str = ""

    @model_validator(mode="after")
    def _versioned(self) -> Self:
        ids = [provider.provider_id for provider in self.providers]
        if len(set(ids)) != len(ids):
            raise ValueError("provider ids must be unique within a book")
        digest = content_hash(self)
        if not self.version:
            object.__setattr__(self, "version", digest)
        elif self.version != digest:
            raise ValueError(f"version {self.version} does not match the book's content ({digest})")
        return self

    def with_overrides(self, overrides: tuple[PriceOverride, ...], *, source: str | None = None) -> PriceBook:
        """A new book (new version) with these overrides in front of the existing ones."""
        return PriceBook(
            book_id=self.book_id,
            source=source or self.source,
            providers=self.providers,
            overrides=overrides + self.overrides,
        )

    @cached_property
    def index(self) -> PriceIndex:
        """Lookup structures and caches for this book (built once per book)."""
        return PriceIndex(self)


def content_hash(book: PriceBook) -> str:
    """``sha256:<hex>`` of the book's canonical JSON, the version left out."""
    content = book.model_dump(mode="json", exclude={"version"}, exclude_none=True)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def load_price_book(raw: str | bytes) -> PriceBook:
    """Parse a price book from its JSON form, with a clear error on bad content."""
    try:
        return PriceBook.model_validate_json(raw)
    except ValueError as exc:
        raise InvalidPriceBook(f"invalid price book: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    """Where a model reference landed in a book."""

    provider_id: str | None
    model_id: str
    model: ModelPrices | None
    override: PriceOverride | None

    def rates_at(self, occurred_at: datetime) -> TokenRates:
        if self.override is not None:
            return self.override.rates
        assert self.model is not None
        return self.model.rates_at(occurred_at)


_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def _dashed_date(reference: str) -> str:
    """``gpt-5.2-20251211`` -> ``gpt-5.2-2025-12-11`` (LiteLLM's compact dates)."""

    def replace(match: re.Match[str]) -> str:
        year, month, day = (int(match.group(i)) for i in range(2, 5))
        try:
            date(year, month, day)
        except ValueError:
            return match.group(0)
        return f"-{year:04d}-{month:02d}-{day:02d}"

    return _COMPACT_DATE.sub(replace, reference)


class PriceIndex:
    """Resolves model references against one book. Results are cached per reference;
    the cache is a pure function of the book, so it never changes an answer."""

    CACHE_ENTRIES_MAX = 100_000

    def __init__(self, book: PriceBook) -> None:
        self._book = book
        self._providers = {p.provider_id: p for p in book.providers}
        self._overrides: dict[tuple[str, str | None], PriceOverride] = {}
        for override in reversed(book.overrides):  # the first override of a name wins
            self._overrides[(override.model.lower(), override.provider.lower() if override.provider else None)] = (
                override
            )
        # A model id names exactly one entry: it beats any other entry's alias of that name.
        self._by_model_id: dict[str, tuple[ProviderPrices, ModelPrices]] = {}
        for provider in book.providers:
            for model in provider.models:
                self._by_model_id.setdefault(model.model_id.lower(), (provider, model))
        self._cache: dict[tuple[str, str | None], ResolvedPrice | None] = {}

    def resolve(self, model: str, provider: str | None = None) -> ResolvedPrice | None:
        """Find the prices for ``model`` (and optional ``provider``), or None if unpriced."""
        key = (model, provider)
        if key in self._cache:
            return self._cache[key]
        found = self._resolve(model.lower(), provider.lower() if provider else None)
        if len(self._cache) >= self.CACHE_ENTRIES_MAX:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _resolve(self, reference: str, provider_ref: str | None) -> ResolvedPrice | None:
        override = self._overrides.get((reference, provider_ref)) or self._overrides.get((reference, None))
        if override is not None:
            return ResolvedPrice(provider_ref, override.model, None, override)
        # genai-prices' own rules first, so wherever it finds a price we find the same one.
        return self._resolve_as_genai_prices(reference, provider_ref) or self._resolve_beyond(reference, provider_ref)

    def _resolve_as_genai_prices(self, reference: str, provider_ref: str | None) -> ResolvedPrice | None:
        if provider_ref == "litellm" and "/" in reference:
            prefix, _, rest = reference.partition("/")
            if self._find_provider(prefix) is not None:
                provider_ref, reference = prefix, rest
        if provider_ref is not None:
            provider = self._find_provider(provider_ref)
            if provider is not None:
                return self._find_model(provider, reference)
            if provider_ref != "litellm":
                return None
        for provider in self._book.providers:
            if provider.model_match is not None and provider.model_match.matches(reference):
                return self._find_model(provider, reference)
        return None

    def _resolve_beyond(self, reference: str, provider_ref: str | None) -> ResolvedPrice | None:
        """What genai-prices does not do: an entry whose id is exactly the name, then a
        ``provider/model`` name with no provider given, then a scan of every provider
        (books imported from LiteLLM have no provider rules)."""
        if provider_ref not in (None, "litellm"):
            return None
        if (exact := self._by_model_id.get(reference)) is not None:
            return ResolvedPrice(exact[0].provider_id, exact[1].model_id, exact[1], None)
        if "/" in reference:
            prefix, _, rest = reference.partition("/")
            prefixed = self._find_provider(prefix)
            if prefixed is not None and (found := self._find_model(prefixed, rest)) is not None:
                return found
        for provider in self._book.providers:
            if (found := self._find_model(provider, reference, fallbacks=False)) is not None:
                return found
        return None

    def _find_provider(self, provider_ref: str) -> ProviderPrices | None:
        if provider_ref in self._providers:
            return self._providers[provider_ref]
        for provider in self._book.providers:
            if provider.provider_match is not None and provider.provider_match.matches(provider_ref):
                return provider
        return None

    def _find_model(self, provider: ProviderPrices, reference: str, *, fallbacks: bool = True) -> ResolvedPrice | None:
        model = self._match_model(provider, reference, fallbacks=fallbacks)
        if model is None and (dashed := _dashed_date(reference)) != reference:
            model = self._match_model(provider, dashed, fallbacks=fallbacks)
        return None if model is None else ResolvedPrice(provider.provider_id, model.model_id, model, None)

    def _match_model(self, provider: ProviderPrices, reference: str, *, fallbacks: bool) -> ModelPrices | None:
        for model in provider.models:
            if model.match.matches(reference):
                return model
        if fallbacks:
            for fallback_id in provider.fallback_providers:
                fallback = self._providers.get(fallback_id)
                if fallback is not None and (found := self._match_model(fallback, reference, fallbacks=False)):
                    return found
        return None
