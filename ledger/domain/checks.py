"""May a call go ahead? The budget check of a would-be call, over every scope it names.

``check`` answers from the scopes' states as the worker last published them, windows
rolled over to ``now`` first (the worker's timer may not have ticked yet). A scope is over
when any limit that counts for the call's model is exceeded (DESIGN section 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from ledger.domain.budgets import BudgetState, LimitState, alert_message
from ledger.domain.fold import advance, new_state
from ledger.domain.scopes import GLOBAL_SCOPE, scope_key

TAGS_PER_CHECK_MAX = 32


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    """One scope of a check: its state now and the limits that count for the model."""

    scope_key: str
    state: BudgetState
    applicable: tuple[LimitState, ...]

    @property
    def exceeded(self) -> tuple[LimitState, ...]:
        return tuple(limit for limit in self.applicable if limit.exceeded)

    @property
    def binding(self) -> LimitState | None:
        """The applicable limit with the least room left (exceeded ones first)."""
        capped = [limit for limit in self.applicable if limit.remaining_nanos is not None]
        if not capped:
            return None
        return min(capped, key=lambda limit: (not limit.exceeded, limit.remaining_nanos, limit.spec.limit_name))

    @property
    def remaining_nanos(self) -> int | None:
        binding = self.binding
        return None if binding is None else binding.remaining_nanos


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Every scope of a call; ``refused_by`` is the first scope over budget, if any."""

    model: str | None
    scopes: tuple[ScopeCheck, ...]

    @property
    def refused_by(self) -> ScopeCheck | None:
        return next((scope for scope in self.scopes if scope.exceeded), None)

    @property
    def allowed(self) -> bool:
        return self.refused_by is None

    def message(self) -> str | None:
        """LiteLLM's wording: ``Budget has been exceeded! Current cost: X, Max budget: Y``."""
        refused = self.refused_by
        if refused is None:
            return None
        limit = refused.exceeded[0]
        return alert_message("exceeded", limit.spend_nanos, limit.spec)


def call_scopes(
    *,
    user: str | None = None,
    team: str | None = None,
    key: str | None = None,
    end_user: str | None = None,
    tags: Iterable[str] = (),
) -> tuple[str, ...]:
    """The scope keys a call is charged to, in the order a usage event names them:
    global, user, team, key, end user, tags. Raises ``InvalidScope`` on a bad id."""
    keys = [GLOBAL_SCOPE]
    for kind, scope_id in (("user", user), ("team", team), ("key", key), ("end_user", end_user)):
        if scope_id is not None:
            keys.append(scope_key(kind, scope_id))
    tag_list = list(dict.fromkeys(tags))
    if len(tag_list) > TAGS_PER_CHECK_MAX:
        raise ValueError(f"at most {TAGS_PER_CHECK_MAX} tags per check")
    keys.extend(scope_key("tag", tag) for tag in tag_list)
    return tuple(keys)


def current_state(state: BudgetState, now: datetime) -> BudgetState:
    """``state`` with every window that ended by ``now`` rolled over."""
    return advance(state, now)[0]


def check(
    states: Mapping[str, BudgetState], scope_keys: Iterable[str], model: str | None, now: datetime
) -> CheckResult:
    """Check a call to ``model`` against every scope in ``scope_keys`` (a scope nothing
    happened to has no limits and never refuses)."""
    scopes = []
    for key in scope_keys:
        state = states.get(key)
        state = new_state(key) if state is None else current_state(state, now)
        applicable = tuple(limit for limit in state.limits if limit.spec.model is None or limit.spec.model == model)
        scopes.append(ScopeCheck(key, state, applicable))
    return CheckResult(model, tuple(scopes))
