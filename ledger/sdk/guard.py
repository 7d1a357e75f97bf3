"""The process-wide budget, as LiteLLM's ``litellm.max_budget`` / ``litellm._current_cost``,
and ``guard``: refuse a call before it is made when that budget or any scope is over.

``ledger.max_budget`` (USD, ``None`` = no limit) is read at every ``guard`` call, so it
can be set at any time. ``current_cost()`` is what this process recorded with
``record_cost`` (the LiteLLM callback records every call it publishes); like LiteLLM's,
it lives in memory and starts at 0 with the process. Budgets that survive restarts and
span processes are the ledger's scopes, which ``guard`` checks through the api.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from decimal import Decimal

from ledger.client import BudgetExceeded, CheckAnswer, LedgerClient
from ledger.domain.money import nanos_to_usd, usd_to_nanos

Money = Decimal | int | float | str

_lock = threading.Lock()
_current_cost_nanos = 0
_default_client: LedgerClient | None = None


class BudgetExceededError(Exception):
    """A budget is exceeded: the process-wide ``ledger.max_budget`` (``scope`` is
    ``None``) or a ledger scope such as ``team:ml``. ``current_cost`` and ``max_budget``
    are USD floats as LiteLLM's error has them; the ``*_nanos`` fields are exact."""

    def __init__(
        self,
        current_cost_nanos: int,
        max_budget_nanos: int,
        *,
        scope: str | None = None,
        message: str | None = None,
    ) -> None:
        self.current_cost_nanos = current_cost_nanos
        self.max_budget_nanos = max_budget_nanos
        self.current_cost = float(nanos_to_usd(current_cost_nanos))
        self.max_budget = float(nanos_to_usd(max_budget_nanos))
        self.scope = scope
        self.message = message or (
            f"Budget has been exceeded! Current cost: {self.current_cost}, Max budget: {self.max_budget}"
        )
        super().__init__(self.message)


def money_nanos(amount: Money, name: str) -> int:
    """Nanos of a USD amount given as a number or text (a float through its shortest repr)."""
    if isinstance(amount, bool):
        raise TypeError(f"{name} must be an amount in USD, got {amount!r}")
    return usd_to_nanos(Decimal(repr(amount)) if isinstance(amount, float) else amount)


def record_cost(cost: Money | None = None, *, cost_nanos: int | None = None) -> int:
    """Add one call's cost (USD, or exact ``cost_nanos``) to this process's
    ``current_cost()``; returns the new total in nanos."""
    if (cost is None) == (cost_nanos is None):
        raise TypeError("give exactly one of cost (USD) or cost_nanos")
    nanos = money_nanos(cost, "cost") if cost is not None else cost_nanos
    assert nanos is not None
    if nanos < 0:
        raise ValueError(f"a call's cost cannot be negative, got {nanos} nanos")
    global _current_cost_nanos
    with _lock:
        _current_cost_nanos += nanos
        return _current_cost_nanos


def current_cost_nanos() -> int:
    """What this process recorded, in nanos."""
    with _lock:
        return _current_cost_nanos


def current_cost() -> float:
    """What this process recorded, in USD (LiteLLM's ``litellm._current_cost``)."""
    return float(nanos_to_usd(current_cost_nanos()))


def reset_current_cost() -> None:
    """Start this process's count again from 0."""
    global _current_cost_nanos
    with _lock:
        _current_cost_nanos = 0


def max_budget_nanos() -> int | None:
    """``ledger.max_budget`` in nanos, or ``None`` when unset."""
    value = getattr(sys.modules.get("ledger"), "max_budget", None)
    return None if value is None else money_nanos(value, "ledger.max_budget")


def check_process_budget() -> None:
    """Raise ``BudgetExceededError`` when this process spent more than ``ledger.max_budget``
    (LiteLLM's rule: current cost > max budget)."""
    limit = max_budget_nanos()
    spent = current_cost_nanos()
    if limit is not None and spent > limit:
        raise BudgetExceededError(spent, limit)


def error_from_check(answer: CheckAnswer) -> BudgetExceededError:
    """The error for a refused ``/v1/check``: the refusing scope's spend and limit."""
    refusing = next((scope for scope in answer.scopes if scope.scope_key == answer.scope), None)
    spent = refusing.spend_nanos if refusing is not None else 0
    limit = refusing.max_budget_nanos if refusing is not None and refusing.max_budget_nanos is not None else 0
    return BudgetExceededError(spent, limit, scope=answer.scope, message=answer.message)


def _client() -> LedgerClient:
    global _default_client
    with _lock:
        if _default_client is None:
            from ledger.settings import Settings

            _default_client = LedgerClient.from_settings(Settings())
        return _default_client


def guard(
    *,
    user: str | None = None,
    team: str | None = None,
    key: str | None = None,
    end_user: str | None = None,
    tags: Sequence[str] = (),
    model: str | None = None,
    client: LedgerClient | None = None,
) -> None:
    """Raise ``BudgetExceededError`` if a call may not go ahead: this process is over
    ``ledger.max_budget``, or (when scopes are named) any of them is over budget by the
    ledger's ``/v1/check``. Without ``client``, the api is the one ``SPEND_LEDGER_API_URL``
    names, with ``SPEND_LEDGER_MASTER_KEY`` or else ``SPEND_LEDGER_INGEST_KEY``."""
    check_process_budget()
    if user is None and team is None and key is None and end_user is None and not tags:
        return
    try:
        (client or _client()).check(
            user=user, team=team, key=key, end_user=end_user, tags=tags, model=model, raise_if_exceeded=True
        )
    except BudgetExceeded as exc:
        raise error_from_check(exc.answer) from exc
