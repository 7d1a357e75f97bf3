"""Budgets: the commands that configure them, the state the fold keeps, the alerts it emits.

A scope (``team:ml``) may hold several limits at once, say ``1d`` $5 and ``monthly``
$100, each with its own windows; a limit may count one model only (LiteLLM's
``model_max_budget``). The scope is over budget when any limit is.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self, cast

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from ledger.domain.events import FROZEN, SCHEMA_VERSION, EventId, ModelName
from ledger.domain.money import MAX_NANOS, format_usd
from ledger.domain.scopes import parse_scope_key
from ledger.domain.windows import parse_duration, zone

LIMITS_PER_SCOPE_MAX = 32

AlertKind = Literal["exceeded", "soft-threshold", "reset", "recovered"]
CommandAction = Literal["upsert", "delete", "reset", "set_overall"]


def _checked_scope_key(value: str) -> str:
    parse_scope_key(value)
    return value


def _checked_duration(value: str) -> str:
    return parse_duration(value).text


def _checked_zone(value: str) -> str:
    zone(value)
    return value


ScopeKey = Annotated[str, AfterValidator(_checked_scope_key)]
DurationText = Annotated[str, AfterValidator(_checked_duration)]
ZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_checked_zone)]
LimitName = Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=r"^[^\x00-\x1f\x7f]+$")]
Nanos = Annotated[int, Field(ge=0, le=MAX_NANOS)]


class BudgetSpec(BaseModel):
    """One limit of a scope. ``duration`` None means the window never resets.

    Exceeded means window spend > ``max_budget_nanos``; the soft threshold is reached at
    spend >= ``soft_budget_nanos`` (alert only, never refused).
    """

    model_config = FROZEN

    name: LimitName | None = None
    max_budget_nanos: Nanos | None = None
    soft_budget_nanos: Nanos | None = None
    duration: DurationText | None = None
    model: ModelName | None = None
    timezone: ZoneName = "UTC"
    week_start: int = Field(default=0, ge=0, le=6, description="0 = Monday ... 6 = Sunday")

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.max_budget_nanos is None and self.soft_budget_nanos is None:
            raise ValueError("a budget needs max_budget_nanos, soft_budget_nanos, or both")
        if self.name is None:
            object.__setattr__(self, "name", default_limit_name(self.duration, self.model))
        return self

    @property
    def limit_name(self) -> str:
        assert self.name is not None
        return self.name

    def window_rules(self) -> tuple[str | None, str, int]:
        """What decides this limit's windows; a change to any part opens a new window."""
        return (self.duration, self.timezone, self.week_start)


def default_limit_name(duration: str | None, model: str | None) -> str:
    """``1d``, ``monthly``, ``total``; ``model:gpt-4o:1d`` for a per-model limit."""
    base = duration or "total"
    return f"model:{model}:{base}" if model else base


class BudgetCommand(BaseModel):
    """An event-sourced change to a scope's budgets, applied at ``issued_at``.

    ``upsert`` sets the scope's whole list of limits (a limit keeps its window unless its
    duration, time zone or week start changed); ``delete`` removes every limit; ``reset``
    opens a new window now, for every limit or only ``limit_name``. ``set_overall`` puts
    its one budget in place of the scope's overall limit and keeps every other limit as the
    fold finds it (``with_overall``): a writer that knows one limit (LiteLLM's
    ``total_budget``) cannot erase limits changed since it last read the scope.
    """

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    command_id: EventId
    scope_key: ScopeKey
    action: CommandAction
    issued_at: AwareDatetime
    budgets: tuple[BudgetSpec, ...] = Field(default=(), max_length=LIMITS_PER_SCOPE_MAX)
    alias: str | None = Field(default=None, max_length=256)
    limit_name: LimitName | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.action == "upsert" and not self.budgets:
            raise ValueError("an upsert needs at least one budget; use delete to remove them")
        if self.action == "set_overall" and not (len(self.budgets) == 1 and is_overall(self.budgets[0])):
            raise ValueError("a set_overall carries one budget, with max_budget_nanos and no model")
        if self.action not in ("upsert", "set_overall") and self.budgets:
            raise ValueError(f"a {self.action} carries no budgets")
        names = [spec.limit_name for spec in self.budgets]
        if len(set(names)) != len(names):
            raise ValueError(f"budget names must be unique within a scope: {names}")
        if self.limit_name is not None and self.action != "reset":
            raise ValueError("limit_name is only for reset")
        return self


def is_overall(spec: BudgetSpec) -> bool:
    """An overall limit: a max budget on every model's spend (LiteLLM's ``total_budget``)."""
    return spec.model is None and spec.max_budget_nanos is not None


def with_overall(specs: tuple[BudgetSpec, ...], overall: BudgetSpec) -> tuple[BudgetSpec, ...]:
    """``specs`` with ``overall`` in place of the first overall limit (first when there is
    none), every other limit kept. Named like another kept limit, it is renamed
    ``litellm:<name>``, so no limit is lost to a name."""
    at = next((i for i, spec in enumerate(specs) if is_overall(spec)), None)
    kept = specs if at is None else specs[:at] + specs[at + 1 :]
    if overall.limit_name in {spec.limit_name for spec in kept}:
        overall = overall.model_copy(update={"name": f"litellm:{overall.limit_name}"})
    at = 0 if at is None else at
    return (*kept[:at], overall, *kept[at:])


class LimitState(BaseModel):
    """A limit and its current window."""

    model_config = FROZEN

    spec: BudgetSpec
    anchor: AwareDatetime
    window_start: AwareDatetime
    window_end: AwareDatetime | None
    spend_nanos: int = Field(ge=-MAX_NANOS, le=MAX_NANOS)
    # Crossings already alerted in this window, as (kind, threshold in nanos).
    alerted: tuple[tuple[AlertKind, int], ...] = ()

    @property
    def exceeded(self) -> bool:
        return self.spec.max_budget_nanos is not None and self.spend_nanos > self.spec.max_budget_nanos

    @property
    def remaining_nanos(self) -> int | None:
        """What may still be spent before the limit is exceeded (never below zero)."""
        if self.spec.max_budget_nanos is None:
            return None
        return max(0, self.spec.max_budget_nanos - self.spend_nanos)


class BudgetState(BaseModel):
    """Everything the live side keeps for one scope; changed only by the fold."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    scope_key: ScopeKey
    alias: str | None = None
    limits: tuple[LimitState, ...] = ()
    total_spend_nanos: int = Field(default=0, ge=-MAX_NANOS, le=MAX_NANOS)
    entry_count: int = Field(default=0, ge=0)
    last_occurred_at: AwareDatetime | None = None

    @property
    def exceeded(self) -> bool:
        return any(limit.exceeded for limit in self.limits)

    def exceeded_limits(self, model: str | None = None) -> tuple[LimitState, ...]:
        """Limits that would refuse a call to ``model`` now (per-model limits count only
        for their model)."""
        return tuple(
            limit for limit in self.limits if limit.exceeded and (limit.spec.model is None or limit.spec.model == model)
        )


class BudgetAlert(BaseModel):
    """A crossing, reset or recovery of one limit. ``alert_id`` is derived from (scope,
    limit, window, kind, threshold), so a repeated alert is a harmless duplicate."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    alert_id: str
    scope_key: ScopeKey
    alias: str | None = None
    limit_name: str
    kind: AlertKind
    window_start: AwareDatetime
    window_end: AwareDatetime | None
    spend_nanos: int
    max_budget_nanos: int | None
    soft_budget_nanos: int | None
    threshold_nanos: int
    occurred_at: AwareDatetime
    trigger_id: str
    message: str


def alert_message(kind: AlertKind, spend_nanos: int, spec: BudgetSpec) -> str:
    """Human text of an alert; ``exceeded`` reads exactly like LiteLLM's budget error."""
    cost = format_usd(spend_nanos)
    max_text = "none" if spec.max_budget_nanos is None else format_usd(spec.max_budget_nanos)
    if kind == "exceeded":
        return f"Budget has been exceeded! Current cost: {cost}, Max budget: {max_text}"
    if kind == "soft-threshold":
        soft = format_usd(spec.soft_budget_nanos or 0)
        return f"Soft budget reached! Current cost: {cost}, Soft budget: {soft}, Max budget: {max_text}"
    if kind == "recovered":
        return f"Budget recovered. Current cost: {cost}, Max budget: {max_text}"
    return f"Budget window reset. Spend in the closed window: {cost}, Max budget: {max_text}"


def all_fields(model: type[BaseModel]) -> set[str]:
    """One shared, read-only "every field was set" for ``model_construct(_fields_set=...)``.

    The fold builds a new frozen state per scope per step, and pydantic would otherwise
    give each its own set of field names: about 700 of the 1,900 bytes a scope took in
    the worker's memory (measured). Frozen models never add to it.
    """
    return cast(set[str], frozenset(model.model_fields))
