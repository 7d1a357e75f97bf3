"""A drop-in for LiteLLM's ``BudgetManager``: the same constructor, methods, arguments and
return shapes, without its weaknesses.

- ``client_type="local"`` keeps users in an SQLite file (``user_cost.sqlite`` in the
  working directory, as LiteLLM keeps ``user_cost.json``); every update is one
  transaction, committed before it returns, so processes sharing the file lose no update.
- ``client_type="hosted"`` talks to the spend-ledger api: spend is usage events charged
  by the worker, budgets are per-scope commands, so managers in many processes neither
  overwrite each other nor lose spend on restart.

Money is exact (integer nano-USD) inside; the methods return USD floats as LiteLLM's do,
and ``*_nanos`` companions give the exact amounts. Windows are the ledger's: ``monthly`` is
a calendar month (LiteLLM: 28 days), and they roll over by themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.domain.windows import parse_duration
from ledger.integrations.litellm_budget import usd_float
from ledger.sdk.budget_manager.records import (
    BudgetBackend,
    InvalidUser,
    UnknownUser,
    UserBudget,
    checked_user,
    event_from_completion,
    event_from_text,
    message_text,
    prompt_cost_nanos,
)
from ledger.sdk.guard import Money, money_nanos

LOCAL_FILE_NAME = "user_cost.sqlite"

__all__ = ["LOCAL_FILE_NAME", "BudgetManager", "InvalidUser", "UnknownUser", "UserBudget"]


def _budget_nanos(total_budget: Money) -> int:
    nanos = money_nanos(total_budget, "total_budget")
    if nanos < 0:
        raise ValueError(f"total_budget cannot be negative, got {total_budget}")
    return nanos


class BudgetManager:
    """LiteLLM's ``BudgetManager(project_name, client_type, api_base, headers)``.

    Keyword-only extras: ``path`` (local: the SQLite file), ``key`` (hosted: the api's
    master key, instead of an ``Authorization`` header), ``timeout_s`` (local: how long to
    wait for another process's lock; hosted: per request), ``clock`` (tests).
    """

    def __init__(
        self,
        project_name: str,
        client_type: str = "local",
        api_base: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        path: str | Path | None = None,
        key: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not isinstance(project_name, str) or not project_name:
            raise ValueError("project_name must be a non-empty string")
        self.project_name = project_name
        self.client_type = client_type
        self._clock = clock or (lambda: datetime.now(UTC))
        self._backend: BudgetBackend
        if client_type == "local":
            from ledger.sdk.budget_manager.local import LocalBudgets

            self.path = Path(path) if path is not None else Path.cwd() / LOCAL_FILE_NAME
            self._backend = LocalBudgets(self.path, project_name, clock=self._clock, lock_timeout_s=timeout_s)
        elif client_type == "hosted":
            from ledger.sdk.budget_manager.hosted import HostedBudgets

            self._backend = HostedBudgets(project_name, api_base, headers, key=key, timeout_s=timeout_s)
        else:
            raise ValueError(f"client_type must be 'local' or 'hosted', got {client_type!r}")
        self.api_base = getattr(self._backend, "api_base", api_base)

    def close(self) -> None:
        """Release the backend (an HTTP connection pool when hosted)."""
        self._backend.close()

    def __enter__(self) -> BudgetManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- LiteLLM's methods ------------------------------------------------------------

    def load_data(self) -> None:
        """Nothing to load: every read goes to the file or the service (kept for LiteLLM)."""

    @property
    def user_dict(self) -> dict[str, dict[str, Any]]:
        """LiteLLM's ``user_dict``, read fresh; editing it changes nothing stored."""
        return {budget.user: budget.as_litellm() for budget in self._backend.load_all()}

    def create_budget(
        self,
        total_budget: Money,
        user: str,
        duration: str | None = None,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Set ``user``'s budget in USD per ``duration`` (``daily``, ``weekly``,
        ``monthly``, ``yearly``, or any ledger duration such as ``1h``; None: never
        resets). ``created_at`` (epoch seconds) defaults to now, taken at each call.
        Spend already in the current window is kept."""
        user = checked_user(user)
        nanos = _budget_nanos(total_budget)
        if duration is not None:
            parse_duration(duration)  # InvalidBudget names the accepted forms
        stamp = time.time() if created_at is None else float(created_at)
        return self._backend.create(user, nanos, duration, stamp).as_litellm()

    def projected_cost(self, model: str, messages: Sequence[Mapping[str, Any]], user: str) -> float:
        """The user's current cost plus the prompt cost of ``messages`` on ``model``."""
        from ledger.tokenizer import count_tokens

        prompt_nanos = prompt_cost_nanos(model, count_tokens(message_text(messages)), self._clock())
        return usd_float(self._load(user).current_cost_nanos + prompt_nanos)

    def get_total_budget(self, user: str) -> float:
        """The user's budget in USD (``KeyError`` for an unknown user, as LiteLLM)."""
        return usd_float(self._load(user).total_budget_nanos)

    def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
    ) -> dict[str, Any]:
        """Charge one call: a completion (LiteLLM ``ModelResponse``, OpenAI response, or a
        dict with ``model`` and ``usage``), or ``model`` + ``input_text`` + ``output_text``
        whose tokens are counted. Returns ``{"user": <user's entry>}``."""
        user = checked_user(user)
        now = self._clock()
        if model and input_text and output_text:
            event = event_from_text(
                model, input_text, output_text, project_name=self.project_name, user=user, occurred_at=now
            )
        elif completion_obj:
            event = event_from_completion(completion_obj, project_name=self.project_name, user=user, occurred_at=now)
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in "
                "(completion_obj, or model + input_text + output_text)"
            )
        return {"user": self._backend.charge(user, event).as_litellm()}

    def get_current_cost(self, user: str) -> float:
        """The user's spend in the current window, USD."""
        return usd_float(self._load(user).current_cost_nanos)

    def get_model_cost(self, user: str) -> dict[str, float]:
        """The user's spend per model in the current window, USD."""
        return {model: usd_float(nanos) for model, nanos in self._load(user).model_cost_nanos.items()}

    def is_valid_user(self, user: str) -> bool:
        """Whether ``user`` has a budget."""
        try:
            return self._backend.load(checked_user(user)) is not None
        except InvalidUser:
            return False

    def get_users(self) -> list[str]:
        """Every user with a budget."""
        return [budget.user for budget in self._backend.load_all()]

    def reset_cost(self, user: str) -> dict[str, Any]:
        """Start the user's window again now: current and per-model cost 0."""
        return {"user": self._backend.reset(checked_user(user)).as_litellm()}

    def reset_on_duration(self, user: str) -> None:
        """LiteLLM resets a user whose duration has elapsed here; the ledger's windows roll
        over by themselves, so this only checks the user exists."""
        self._load(user)

    def update_budget_all_users(self) -> None:
        """``reset_on_duration`` for every user: nothing to do, windows roll over by themselves."""

    def save_data(self) -> dict[str, str]:
        """Every change was stored when it was made; nothing is pending."""
        return {"status": "success"}

    # -- exact companions -------------------------------------------------------------

    def get_current_cost_nanos(self, user: str) -> int:
        """The user's spend in the current window, exact nano-USD."""
        return self._load(user).current_cost_nanos

    def get_total_budget_nanos(self, user: str) -> int:
        """The user's budget, exact nano-USD."""
        return self._load(user).total_budget_nanos

    def get_budget(self, user: str) -> UserBudget:
        """Everything about the user's budget, exact."""
        return self._load(user)

    def _load(self, user: str) -> UserBudget:
        found = self._backend.load(checked_user(user))
        if found is None:
            raise UnknownUser(user)
        return found
