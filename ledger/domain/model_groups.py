"""Model groups: what a call names, what it is rate limited as, and what it is priced as.

A LiteLLM proxy ``model_name`` is a *group*, often an alias (``team-gpt``) for deployments
that each call a priced model (``litellm_params.model: gpt-4o``). Rate shares belong to the
group (LiteLLM's rate limiter counts per ``model_name``); prices belong to the deployment's
model. The router picks the deployment after admission, so an estimate must hold for any of
them: it is the dearest one's. A deployment model without a price (``azure/gpt-4o-eu``, an
endpoint's name) is priced as its group when the group's name has a price (``gpt-4o``);
else it is never estimated as free: it holds the configured fallback, or the call is
refused (LiteLLM's own issue #35524 is that hole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.domain.errors import UnpricedModel
from ledger.domain.events import TokenUsage
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import usage_cost_nanos

DEPLOYMENT_MODELS_MAX = 64  # distinct priced models behind one group; more is a config mistake


@dataclass(frozen=True, slots=True)
class CallModels:
    """The group whose TPM/RPM shares a call uses, and the models it may be priced as."""

    group: str
    candidates: tuple[str, ...]


def call_models(
    model: str | None,
    model_group: str | None,
    models: Sequence[str],
    recorded: Mapping[str, tuple[str, ...]],
) -> CallModels:
    """Resolve what an admit names. The group is ``model_group``, else ``model``. The
    candidates are, first found: the ``models`` the caller lists (the proxy's router knows
    its deployments), a ``model`` other than the group, the group's ``recorded`` models
    (``limits import``), else the group's own name (a group that is its model)."""
    group = model_group or model
    if group is None:
        raise ValueError("an admit names its model or its model_group")
    if models:
        candidates = tuple(dict.fromkeys(models))
    elif model is not None and model != group:
        candidates = (model,)
    else:
        candidates = recorded.get(group) or (group,)
    if len(candidates) > DEPLOYMENT_MODELS_MAX:
        raise ValueError(f"{len(candidates)} models for one group; at most {DEPLOYMENT_MODELS_MAX}")
    return CallModels(group, candidates)


@dataclass(frozen=True, slots=True)
class PricedEstimate:
    """The dearest candidate and its cost; ``fallback``: it had no price and holds the
    configured fallback estimate."""

    model: str
    cost_nanos: int
    fallback: bool = False


def dearest_estimate(
    book: PriceBook,
    models: CallModels,
    usage: TokenUsage,
    at: datetime,
    unpriced_estimate_nanos: int | None,
) -> PricedEstimate:
    """``usage`` priced as each candidate; the dearest, so the hold is an upper bound
    whichever deployment serves the call. A candidate without a price is priced as the
    group, else costs ``unpriced_estimate_nanos``; without one, ``UnpricedModel`` is
    raised for it."""
    assert models.candidates, "a call is priced as at least one model"
    dearest: PricedEstimate | None = None
    for model in models.candidates:
        try:
            found = PricedEstimate(model, usage_cost_nanos(book, model, usage, at))
        except UnpricedModel:
            found = _unpriced(book, model, models.group, usage, at, unpriced_estimate_nanos)
        if dearest is None or found.cost_nanos > dearest.cost_nanos:
            dearest = found
    assert dearest is not None
    return dearest


def _unpriced(
    book: PriceBook, model: str, group: str, usage: TokenUsage, at: datetime, unpriced_estimate_nanos: int | None
) -> PricedEstimate:
    if group != model:
        try:
            return PricedEstimate(group, usage_cost_nanos(book, group, usage, at))
        except UnpricedModel:
            pass
    if unpriced_estimate_nanos is None:
        raise UnpricedModel(model, None, book.version)
    return PricedEstimate(model, unpriced_estimate_nanos, fallback=True)
