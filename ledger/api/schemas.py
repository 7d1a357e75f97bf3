"""Request and response bodies of the HTTP api, and their conversion to and from the domain.

Money comes in as decimal USD (a JSON number or string, parsed as Decimal from its text,
never through a float) and goes out twice: a float in USD for people and LiteLLM-shaped
clients, and the exact integer ``*_nanos`` beside it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ledger.domain.budgets import LIMITS_PER_SCOPE_MAX, BudgetSpec, BudgetState, LimitState
from ledger.domain.checks import CheckResult, ScopeCheck
from ledger.domain.events import ModelName
from ledger.domain.money import MAX_USD, MoneyError, nanos_to_usd, usd_to_nanos
from ledger.domain.rate_shares import PriorityName
from ledger.domain.scopes import parse_scope_key
from ledger.domain.windows import parse_duration

# A budget over about 9.2e9 USD once made every later replay fail (its nanos overflowed
# Arrow int64): MAX_USD keeps every amount inside a BIGINT.
BUDGET_USD_MAX = MAX_USD
UsdAmount = Annotated[Decimal, Field(ge=0, le=BUDGET_USD_MAX, allow_inf_nan=False)]
REQUEST = ConfigDict(extra="forbid", frozen=True)


def usd(nanos: int | None) -> float | None:
    """A float of USD for display (exact value in the ``*_nanos`` field next to it)."""
    return None if nanos is None else float(nanos_to_usd(nanos))


def _nanos(amount: Decimal | None, field: str) -> int | None:
    if amount is None:
        return None
    try:
        return usd_to_nanos(amount, exact=True)
    except MoneyError as exc:
        raise ValueError(f"{field}: {exc}") from exc


def _duration(text: str | None) -> str | None:
    return None if text is None else parse_duration(text).text


class ModelBudget(BaseModel):
    """A per-model limit in LiteLLM's ``model_max_budget`` form: ``{"budget_limit": 0.5,
    "time_period": "1d"}`` (``max_budget``/``budget_duration`` are accepted too)."""

    model_config = REQUEST

    budget_limit: UsdAmount | None = None
    time_period: str | None = None
    max_budget: UsdAmount | None = None
    budget_duration: str | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ModelBudget:
        if (self.budget_limit is None) == (self.max_budget is None):
            raise ValueError("give the model's limit as budget_limit (or max_budget), once")
        if self.time_period is not None and self.budget_duration is not None:
            raise ValueError("give the period as time_period or budget_duration, not both")
        return self


class BudgetRequest(BaseModel):
    """``PUT /v1/budgets/{kind}/{id}``: LiteLLM's budget fields. Sets the scope's whole list
    of limits: the overall one and one per model."""

    model_config = REQUEST

    max_budget: UsdAmount | None = Field(default=None, description="USD per window; exceeded when spend > max_budget")
    soft_budget: UsdAmount | None = Field(default=None, description="USD per window that raises an alert only")
    budget_duration: str | None = Field(
        default=None, description="30s, 1m, 1h, 1d, 7d, 30d, daily, weekly, monthly, yearly; none: never resets"
    )
    model_max_budget: dict[ModelName, UsdAmount | ModelBudget] = Field(
        default_factory=dict, max_length=LIMITS_PER_SCOPE_MAX - 1
    )
    alias: str | None = Field(default=None, max_length=256)
    timezone: str = Field(default="UTC", max_length=64, description="time zone of calendar windows")
    priority: PriorityName | None = Field(
        default=None, description="a key's priority for rate shares (keys only; see priority_reservation)"
    )

    @field_validator("budget_duration")
    @classmethod
    def _known_duration(cls, value: str | None) -> str | None:
        return _duration(value)

    @model_validator(mode="after")
    def _some_budget(self) -> BudgetRequest:
        if self.max_budget is None and self.soft_budget is None and not self.model_max_budget and self.priority is None:
            raise ValueError("set max_budget, soft_budget, model_max_budget or priority; DELETE removes a budget")
        self.specs()  # every limit must build
        return self

    def specs(self) -> tuple[BudgetSpec, ...]:
        """The limits this request sets."""
        specs = []
        if self.max_budget is not None or self.soft_budget is not None:
            specs.append(
                BudgetSpec(
                    max_budget_nanos=_nanos(self.max_budget, "max_budget"),
                    soft_budget_nanos=_nanos(self.soft_budget, "soft_budget"),
                    duration=self.budget_duration,
                    timezone=self.timezone,
                )
            )
        for model, limit in self.model_max_budget.items():
            if isinstance(limit, ModelBudget):
                amount = limit.budget_limit if limit.budget_limit is not None else limit.max_budget
                duration = _duration(limit.time_period or limit.budget_duration) or self.budget_duration
            else:
                amount, duration = limit, self.budget_duration
            specs.append(
                BudgetSpec(
                    max_budget_nanos=_nanos(amount, f"model_max_budget.{model}"),
                    duration=duration,
                    model=model,
                    timezone=self.timezone,
                )
            )
        return tuple(specs)


class ResetRequest(BaseModel):
    """``POST /v1/budgets/{kind}/{id}/reset``: a new window now, for every limit or one."""

    model_config = REQUEST

    limit_name: str | None = Field(default=None, max_length=300)


class LimitView(BaseModel):
    name: str
    model: str | None
    budget_duration: str | None
    max_budget: float | None
    max_budget_nanos: int | None
    soft_budget: float | None
    soft_budget_nanos: int | None
    spend: float
    spend_nanos: int
    remaining_budget: float | None
    remaining_budget_nanos: int | None
    window_start: datetime
    budget_reset_at: datetime | None
    exceeded: bool
    anchor: datetime | None = Field(default=None, description="when the limit's series of windows began")

    @classmethod
    def of(cls, limit: LimitState) -> LimitView:
        spec = limit.spec
        return cls(
            name=spec.limit_name,
            model=spec.model,
            budget_duration=spec.duration,
            max_budget=usd(spec.max_budget_nanos),
            max_budget_nanos=spec.max_budget_nanos,
            soft_budget=usd(spec.soft_budget_nanos),
            soft_budget_nanos=spec.soft_budget_nanos,
            spend=usd(limit.spend_nanos) or 0.0,
            spend_nanos=limit.spend_nanos,
            remaining_budget=usd(limit.remaining_nanos),
            remaining_budget_nanos=limit.remaining_nanos,
            window_start=limit.window_start,
            budget_reset_at=limit.window_end,
            exceeded=limit.exceeded,
            anchor=limit.anchor,
        )


class BudgetView(BaseModel):
    """A scope's budgets as the worker holds them, shaped like LiteLLM's ``/team/new``
    answer (``max_budget``, ``spend``, ``budget_duration``, ``budget_reset_at``) for its
    overall limit, with every limit listed."""

    scope_key: str
    kind: str
    id: str
    alias: str | None
    max_budget: float | None
    max_budget_nanos: int | None
    soft_budget: float | None
    soft_budget_nanos: int | None
    budget_duration: str | None
    spend: float
    spend_nanos: int
    budget_reset_at: datetime | None
    model_max_budget: dict[str, LimitView]
    limits: list[LimitView]
    total_spend: float
    total_spend_nanos: int
    exceeded: bool
    entry_count: int = Field(default=0, description="ledger entries charged to the scope so far")

    @classmethod
    def of(cls, state: BudgetState) -> BudgetView:
        kind, scope_id = parse_scope_key(state.scope_key)
        overall = next((limit for limit in state.limits if limit.spec.model is None), None)
        views = [LimitView.of(limit) for limit in state.limits]
        return cls(
            scope_key=state.scope_key,
            kind=kind,
            id=scope_id,
            alias=state.alias,
            max_budget=None if overall is None else usd(overall.spec.max_budget_nanos),
            max_budget_nanos=None if overall is None else overall.spec.max_budget_nanos,
            soft_budget=None if overall is None else usd(overall.spec.soft_budget_nanos),
            soft_budget_nanos=None if overall is None else overall.spec.soft_budget_nanos,
            budget_duration=None if overall is None else overall.spec.duration,
            spend=usd(overall.spend_nanos if overall else 0) or 0.0,
            spend_nanos=overall.spend_nanos if overall else 0,
            budget_reset_at=None if overall is None else overall.window_end,
            model_max_budget={view.model: view for view in views if view.model is not None},
            limits=views,
            total_spend=usd(state.total_spend_nanos) or 0.0,
            total_spend_nanos=state.total_spend_nanos,
            exceeded=state.exceeded,
            entry_count=state.entry_count,
        )


class BudgetWritten(BudgetView):
    """A budget write's answer: the scope as the worker applied it (``applied`` true), or,
    if the worker did not confirm in time, as it will be (``applied`` false, status 202)."""

    command_id: str | None = Field(description="null when only the key's priority was set")
    applied: bool
    priority: str | None = None


class ScopeCheckView(BaseModel):
    scope_key: str
    alias: str | None
    exceeded: bool
    spend: float
    spend_nanos: int
    max_budget: float | None
    max_budget_nanos: int | None
    remaining_budget: float | None
    remaining_budget_nanos: int | None
    budget_reset_at: datetime | None
    limits: list[LimitView]

    @classmethod
    def of(cls, scope: ScopeCheck) -> ScopeCheckView:
        binding = scope.binding
        return cls(
            scope_key=scope.scope_key,
            alias=scope.state.alias,
            exceeded=bool(scope.exceeded),
            spend=usd(binding.spend_nanos if binding else 0) or 0.0,
            spend_nanos=binding.spend_nanos if binding else 0,
            max_budget=None if binding is None else usd(binding.spec.max_budget_nanos),
            max_budget_nanos=None if binding is None else binding.spec.max_budget_nanos,
            remaining_budget=usd(scope.remaining_nanos),
            remaining_budget_nanos=scope.remaining_nanos,
            budget_reset_at=None if binding is None else binding.window_end,
            limits=[LimitView.of(limit) for limit in scope.applicable],
        )


class CheckView(BaseModel):
    """``GET /v1/check`` when every scope is within budget."""

    allowed: Literal[True] = True
    model: str | None
    scopes: list[ScopeCheckView]


class ErrorBody(BaseModel):
    message: str
    type: str
    scope: str | None = None
    scopes: list[ScopeCheckView] | None = None
    fields: list[dict[str, Any]] | None = None


class ErrorView(BaseModel):
    """Every error answer: ``{"error": {"message", "type", ...}}`` (LiteLLM's shape)."""

    error: ErrorBody


def check_views(result: CheckResult) -> list[dict[str, Any]]:
    """Each scope of a check as ``ScopeCheckView`` fields, built as plain dicts: ``check``
    is the hot path, and a pydantic model per limit per request cost more than the rest
    of the route (measured by ``bench.check``)."""
    return [_scope_check(scope) for scope in result.scopes]


def _scope_check(scope: ScopeCheck) -> dict[str, Any]:
    binding = scope.binding
    spend_nanos = binding.spend_nanos if binding else 0
    max_nanos = None if binding is None else binding.spec.max_budget_nanos
    remaining = scope.remaining_nanos
    return {
        "scope_key": scope.scope_key,
        "alias": scope.state.alias,
        "exceeded": bool(scope.exceeded),
        "spend": usd(spend_nanos),
        "spend_nanos": spend_nanos,
        "max_budget": usd(max_nanos),
        "max_budget_nanos": max_nanos,
        "remaining_budget": usd(remaining),
        "remaining_budget_nanos": remaining,
        "budget_reset_at": None if binding is None else binding.window_end,
        "limits": [_limit(limit) for limit in scope.applicable],
    }


def _limit(limit: LimitState) -> dict[str, Any]:
    spec = limit.spec
    remaining = limit.remaining_nanos
    return {
        "name": spec.limit_name,
        "model": spec.model,
        "budget_duration": spec.duration,
        "max_budget": usd(spec.max_budget_nanos),
        "max_budget_nanos": spec.max_budget_nanos,
        "soft_budget": usd(spec.soft_budget_nanos),
        "soft_budget_nanos": spec.soft_budget_nanos,
        "spend": usd(limit.spend_nanos),
        "spend_nanos": limit.spend_nanos,
        "remaining_budget": usd(remaining),
        "remaining_budget_nanos": remaining,
        "window_start": limit.window_start,
        "budget_reset_at": limit.window_end,
        "exceeded": limit.exceeded,
        "anchor": limit.anchor,
    }


class UsageAccepted(BaseModel):
    """``POST /v1/usage``: every event was acknowledged by the broker."""

    accepted: int
    event_ids: list[str]


class ReplayRequest(BaseModel):
    """``POST /v1/replay``: the CLI's options (``prices`` is a price book object)."""

    model_config = REQUEST

    prices: dict[str, Any] | None = Field(default=None, description="a PriceBook (default: the current book)")
    reprice_from: datetime | None = Field(default=None, alias="from")
    reprice_to: datetime | None = Field(default=None, alias="to")
    scope: list[str] = Field(default_factory=list, max_length=1_000)
    as_of: datetime | None = None
    apply: bool = False
