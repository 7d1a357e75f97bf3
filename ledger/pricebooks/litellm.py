"""Price books imported from LiteLLM's ``model_prices_and_context_window.json`` format.

The file is a JSON object keyed by model name (``gpt-4o``, ``azure/gpt-4o``,
``gemini/gemini-2.5-pro``); each entry names its ``litellm_provider`` and prices in USD
per token. Only what a usage event carries is imported:

========================================  ==================
LiteLLM key                               book field
========================================  ==================
``input_cost_per_token``                  ``input_mtok``
``output_cost_per_token``                 ``output_mtok``
``cache_read_input_token_cost``           ``cache_read_mtok``
``cache_creation_input_token_cost``       ``cache_write_mtok``
``output_cost_per_reasoning_token``       ``reasoning_mtok``
``input_cost_per_request``                ``request_usd``
========================================  ==================

Per-token prices become per-million-token rates exactly (Decimal, no float is ever
created). A key ``<one of the token keys above>_above_<N>k_tokens`` becomes a tier
starting at ``N * 1000`` prompt tokens: LiteLLM, like ``TieredRate``, charges every token
at the higher rate once the prompt passes the threshold. Everything else is left out and
counted in the report: service-tier variants (``_batches``, ``_flex``, ``_priority``,
``_decisions``, ``_ultrafast``, ``_balanced``), one-hour cache writes (``_above_1hr``),
and audio, image, video, character, second and query prices.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, TypeVar

from pydantic import ValidationError

from ledger.domain.errors import InvalidPriceBook
from ledger.domain.prices import (
    RATE_USD_MAX,
    MatchRule,
    ModelPrices,
    PriceBook,
    PriceOverride,
    PricePeriod,
    ProviderPrices,
    RateValue,
    Tier,
    TieredRate,
    TokenRates,
)

DEFAULT_BOOK_ID: Final = "litellm"
DEFAULT_SOURCE: Final = "litellm model_prices_and_context_window.json"

LITELLM_JSON_BYTES_MAX: Final = 64 * 1024 * 1024  # the real file is about 3 MB
PRICE_DECIMAL_PLACES_MAX: Final = 12  # per token (or per request): 6 per million tokens
MODEL_ID_CHARS_MAX: Final = 256
PROVIDER_ID_CHARS_MAX: Final = 128
_TOKENS_PER_MTOK: Final = 6  # a per-token price times 10**6 is a per-million-token rate
_PER_TOKEN_USD_MAX: Final = RATE_USD_MAX.scaleb(-_TOKENS_PER_MTOK)

# LiteLLM per-token key -> TokenRates field (scaled to per million tokens).
TOKEN_PRICE_KEYS: Final[Mapping[str, str]] = {
    "input_cost_per_token": "input_mtok",
    "output_cost_per_token": "output_mtok",
    "cache_read_input_token_cost": "cache_read_mtok",
    "cache_creation_input_token_cost": "cache_write_mtok",
    "output_cost_per_reasoning_token": "reasoning_mtok",
}
REQUEST_PRICE_KEY: Final = "input_cost_per_request"
_PRICED_KEYS: Final = ("input_cost_per_token", "output_cost_per_token", REQUEST_PRICE_KEY)
_TIER_KEY: Final = re.compile(r"^(?P<base>" + "|".join(TOKEN_PRICE_KEYS) + r")_above_(?P<thousands>\d{1,9})k_tokens$")
_SAMPLE_SPEC: Final = "sample_spec"
_T = TypeVar("_T")

# Why an entry was not imported (the keys of ImportReport.skipped).
SKIP_SAMPLE_SPEC: Final = "sample_spec"
SKIP_NOT_AN_OBJECT: Final = "not_an_object"
SKIP_BAD_NAME: Final = "bad_name"
SKIP_BAD_PROVIDER: Final = "bad_provider"
SKIP_NO_TOKEN_PRICE: Final = "no_token_price"
SKIP_NON_NUMERIC_PRICE: Final = "non_numeric_price"
SKIP_IMPRECISE_PRICE: Final = "imprecise_price"
# Counted in ImportReport.ignored_price_keys for a tier whose base price is missing.
TIER_WITHOUT_BASE: Final = "<tier without base price>"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import took and left: models and providers imported, entries skipped
    (model keys by reason) and price keys not modelled (key -> entries carrying it)."""

    models_imported: int
    providers_imported: int
    skipped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ignored_price_keys: Mapping[str, int] = field(default_factory=dict)

    @property
    def skipped_count(self) -> int:
        """How many entries were not imported, all reasons together."""
        return sum(len(keys) for keys in self.skipped.values())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        reasons = ", ".join(f"{reason} {len(keys)}" for reason, keys in sorted(self.skipped.items()))
        return (
            f"imported {self.models_imported} models from {self.providers_imported} providers; "
            f"skipped {self.skipped_count}" + (f" ({reasons})" if reasons else "")
        )


class _SkipEntry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def price_book_from_litellm_json(
    text: str | bytes,
    *,
    book_id: str = DEFAULT_BOOK_ID,
    source: str = DEFAULT_SOURCE,
    overrides: tuple[PriceOverride, ...] = (),
    skip_imprecise: bool = False,
) -> PriceBook:
    """A price book from the text of a LiteLLM price file (see ``import_litellm_prices``)."""
    book, _ = import_litellm_prices(
        text, book_id=book_id, source=source, overrides=overrides, skip_imprecise=skip_imprecise
    )
    return book


def import_litellm_prices(
    text: str | bytes,
    *,
    book_id: str = DEFAULT_BOOK_ID,
    source: str = DEFAULT_SOURCE,
    overrides: tuple[PriceOverride, ...] = (),
    skip_imprecise: bool = False,
) -> tuple[PriceBook, ImportReport]:
    """Import a LiteLLM price file's text into a price book, with a report of what was skipped.

    One provider per ``litellm_provider`` (in first-seen order); each model answers to its
    key and, when the key is ``<provider>/<name>``, to ``<name>``. Entries with no input,
    output or request price, or whose price is not a number, are skipped and reported.

    Raises ``InvalidPriceBook`` for text that is not a JSON object, and for a price that is
    negative, not finite, above 1 USD per token, or finer than 12 decimal places per token
    or request (a float artefact such as ``1.5000999999999998e-07``). With
    ``skip_imprecise`` such an entry is skipped and reported instead: LiteLLM 1.106.12's
    file has 44 of them (databricks and novita models).
    """
    raw = _parse(text)
    models_by_provider: dict[str, list[ModelPrices]] = {}
    skipped: dict[str, list[str]] = {}
    ignored: Counter[str] = Counter()
    for key, entry in raw.items():
        try:
            provider_id, model, entry_ignored = _model(key, entry, skip_imprecise=skip_imprecise)
        except _SkipEntry as skip:
            skipped.setdefault(skip.reason, []).append(key)
            continue
        models_by_provider.setdefault(provider_id, []).append(model)
        ignored.update(entry_ignored)
    try:
        book = PriceBook(
            book_id=book_id,
            source=source,
            providers=tuple(
                ProviderPrices(provider_id=provider_id, models=tuple(models))
                for provider_id, models in models_by_provider.items()
            ),
            overrides=overrides,
        )
    except ValidationError as exc:
        raise InvalidPriceBook(f"invalid LiteLLM price file: {exc}") from exc
    report = ImportReport(
        models_imported=sum(len(models) for models in models_by_provider.values()),
        providers_imported=len(models_by_provider),
        skipped={reason: tuple(keys) for reason, keys in skipped.items()},
        ignored_price_keys=dict(sorted(ignored.items())),
    )
    return book, report


def _parse(text: str | bytes) -> dict[str, object]:
    if len(text) > LITELLM_JSON_BYTES_MAX:
        raise InvalidPriceBook(f"LiteLLM price file is larger than {LITELLM_JSON_BYTES_MAX} bytes")
    try:
        # Decimal for every non-integer number, NaN and Infinity included: never a float.
        raw: object = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError) as exc:
        raise InvalidPriceBook(f"LiteLLM price file is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidPriceBook(f"LiteLLM price file must be a JSON object of models, got {type(raw).__name__}")
    return raw


def _model(key: str, entry: object, *, skip_imprecise: bool) -> tuple[str, ModelPrices, list[str]]:
    """One entry as (provider id, model, price keys left out), or ``_SkipEntry``."""
    if key == _SAMPLE_SPEC:
        raise _SkipEntry(SKIP_SAMPLE_SPEC)
    if not isinstance(entry, dict):
        raise _SkipEntry(SKIP_NOT_AN_OBJECT)
    if not 1 <= len(key) <= MODEL_ID_CHARS_MAX:
        raise _SkipEntry(SKIP_BAD_NAME)
    provider_id = entry.get("litellm_provider")
    if not isinstance(provider_id, str) or not 1 <= len(provider_id) <= PROVIDER_ID_CHARS_MAX:
        raise _SkipEntry(SKIP_BAD_PROVIDER)
    if not any(price_key in entry for price_key in _PRICED_KEYS):
        raise _SkipEntry(SKIP_NO_TOKEN_PRICE)

    bases: dict[str, Decimal] = {}
    tiers: dict[str, list[Tier]] = {}
    request_usd: Decimal | None = None
    ignored: list[str] = []
    for price_key, value in entry.items():
        tier = _TIER_KEY.match(price_key)
        if price_key in TOKEN_PRICE_KEYS:
            bases[price_key] = _per_million(_price(key, price_key, value, skip_imprecise))
        elif tier is not None:
            start = int(tier["thousands"]) * 1000
            price = _per_million(_price(key, price_key, value, skip_imprecise))
            tiers.setdefault(tier["base"], []).append(Tier(start=start, price=price))
        elif price_key == REQUEST_PRICE_KEY:
            request_usd = _price(key, price_key, value, skip_imprecise)
        elif "cost" in price_key:
            ignored.append(price_key)

    fields: dict[str, RateValue] = {}
    for price_key, rate_field in TOKEN_PRICE_KEYS.items():
        base = bases.get(price_key)
        steps = sorted(tiers.get(price_key, ()), key=lambda step: step.start)
        if base is None:
            ignored.extend([TIER_WITHOUT_BASE] * len(steps))
        elif steps:
            fields[rate_field] = _checked(key, TieredRate, base=base, tiers=tuple(steps))
        else:
            fields[rate_field] = base
    rates = _checked(key, TokenRates, request_usd=request_usd, **fields)
    if not rates.is_priced:
        raise _SkipEntry(SKIP_NO_TOKEN_PRICE)
    match = MatchRule(equals=key)
    prefix = provider_id + "/"
    if key.startswith(prefix) and len(key) > len(prefix):
        match = MatchRule(any_of=(match, MatchRule(equals=key[len(prefix) :])))
    model = ModelPrices(model_id=key, match=match, periods=(PricePeriod(rates=rates),))
    return provider_id, model, ignored


def _price(model: str, price_key: str, value: object, skip_imprecise: bool) -> Decimal:
    """A checked USD price (per token or per request) from a parsed JSON value."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _SkipEntry(SKIP_NON_NUMERIC_PRICE)
    price = Decimal(value)
    where = f"model {model!r}, {price_key}"
    if not price.is_finite():
        raise InvalidPriceBook(f"{where}: price must be finite, got {value}")
    if price < 0:
        raise InvalidPriceBook(f"{where}: price must not be negative, got {value}")
    limit = RATE_USD_MAX if price_key == REQUEST_PRICE_KEY else _PER_TOKEN_USD_MAX
    if price > limit:
        raise InvalidPriceBook(f"{where}: a price above {limit} USD is not plausible, got {value}")
    if _decimal_places(price) > PRICE_DECIMAL_PLACES_MAX:
        if skip_imprecise:
            raise _SkipEntry(SKIP_IMPRECISE_PRICE)
        raise InvalidPriceBook(
            f"{where}: price has more than {PRICE_DECIMAL_PLACES_MAX} decimal places, got {value} "
            "(a float artefact? fix the source or import with skip_imprecise)"
        )
    return price


def _decimal_places(value: Decimal) -> int:
    """Significant decimal places, computed exactly (no context rounding)."""
    if value.is_zero():
        return 0
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


def _per_million(per_token: Decimal) -> Decimal:
    # Exact: at most 12 decimal places and at most 1 USD means at most 13 digits.
    return per_token.scaleb(_TOKENS_PER_MTOK)


def _checked(model: str, build: Callable[..., _T], **values: object) -> _T:
    """``build(**values)``, a validation error reported as a bad price book."""
    try:
        return build(**values)
    except ValidationError as exc:
        raise InvalidPriceBook(f"model {model!r}: {exc}") from exc
