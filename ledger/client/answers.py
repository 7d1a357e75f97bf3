"""What the api answers, typed for the client: errors, budgets, checks, spend, alerts.

Each answer model keeps the fields the client uses, typed (amounts as integer
``*_nanos``), and any other field of the answer as it came, so ``model_dump`` gives the
answer back whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ledger.domain.money import nanos_to_usd

Money = Decimal | str | int

# -- errors ---------------------------------------------------------------------------


class LedgerClientError(Exception):
    """Base of every error of this client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LedgerConnectionError(LedgerClientError):
    """The api could not be reached (refused, unresolvable, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the spend-ledger api at {url}: {reason}. Start it with `make run` or "
            "`spend-ledger dev`, or point SPEND_LEDGER_API_URL (the CLI's --url) at a running api"
        )
        self.url = url
        self.reason = reason


class LedgerApiError(LedgerClientError):
    """An error answer: its HTTP status, ``type`` (e.g. ``invalid_request``, ``not_found``,
    ``unauthorized``), message and, for a body that did not validate, the field errors."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        fields: list[dict[str, Any]] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.fields = fields or []
        self.detail: dict[str, Any] = dict(detail or {})  # the whole ``error`` object

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status}, {self.type})"


class BudgetExceeded(LedgerApiError):
    """``check(..., raise_if_exceeded=True)`` on a call a scope's budget refuses (402)."""

    def __init__(self, answer: CheckAnswer) -> None:
        super().__init__(402, "budget_exceeded", answer.message or "Budget has been exceeded!")
        self.answer = answer
        self.scope = answer.scope


class PublishFailed(LedgerClientError):
    """A request of a multi-request ``publish`` failed after earlier ones were accepted:
    ``accepted`` events (``event_ids``) are published, the rest are not. Publishing them
    all again is harmless: the ledger charges an event_id once."""

    def __init__(self, cause: LedgerClientError, accepted: int, event_ids: list[str]) -> None:
        super().__init__(f"{cause}; the first {accepted} events had been published before")
        self.cause = cause
        self.accepted = accepted
        self.event_ids = event_ids


# -- answers --------------------------------------------------------------------------


class Answer(BaseModel):
    """An api answer: the fields the client uses, typed; any others kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class LimitInfo(Answer):
    """One limit of a scope in its current window."""

    name: str
    model: str | None = None
    budget_duration: str | None = None
    max_budget_nanos: int | None = None
    soft_budget_nanos: int | None = None
    spend_nanos: int = 0
    remaining_budget_nanos: int | None = None
    window_start: datetime
    budget_reset_at: datetime | None = None
    exceeded: bool = False
    anchor: datetime | None = None  # when the limit's series of windows began

    @property
    def soft_reached(self) -> bool:
        return self.soft_budget_nanos is not None and self.spend_nanos >= self.soft_budget_nanos


class BudgetInfo(Answer):
    """A scope's budgets as the worker holds them."""

    scope_key: str
    kind: str
    id: str
    alias: str | None = None
    limits: list[LimitInfo] = Field(default_factory=list)
    total_spend_nanos: int = 0
    exceeded: bool = False
    entry_count: int = 0  # ledger entries charged to the scope so far


class BudgetWrite(BudgetInfo):
    """A budget write's answer; ``applied`` False: the worker had not confirmed it in time
    (HTTP 202) and the scope is shown as it will be."""

    command_id: str | None = None  # None: only a key's priority was set
    applied: bool


class ScopeCheckInfo(Answer):
    """One scope of a check: its binding limit (least room left) and every limit that counts."""

    scope_key: str
    alias: str | None = None
    exceeded: bool = False
    spend_nanos: int = 0
    max_budget_nanos: int | None = None
    remaining_budget_nanos: int | None = None
    budget_reset_at: datetime | None = None
    limits: list[LimitInfo] = Field(default_factory=list)


class CheckAnswer(Answer):
    """``GET /v1/check``: ``allowed``, or refused with LiteLLM's ``message`` naming the
    ``scope`` that is over budget."""

    allowed: bool
    model: str | None = None
    scopes: list[ScopeCheckInfo] = Field(default_factory=list)
    message: str | None = None
    scope: str | None = None


class SpendRow(Answer):
    groups: dict[str, Any]
    spend_nanos: int
    entry_count: int
    prompt_tokens: int
    completion_tokens: int


class SpendReport(Answer):
    """``GET /v1/spend``: rows grouped as asked, from the store."""

    group_by: list[str]
    start: datetime | None = None
    end: datetime | None = None
    rows: list[SpendRow]
    truncated: bool = False
    total_spend_nanos: int = 0


class AlertRecord(Answer):
    """A budget alert as the store holds it."""

    alert_id: str
    scope_key: str
    alias: str | None = None
    limit_name: str
    kind: str
    window_start: datetime
    window_end: datetime | None = None
    spend_nanos: int
    max_budget_nanos: int | None = None
    soft_budget_nanos: int | None = None
    threshold_nanos: int
    occurred_at: datetime
    message: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Every event of a ``publish`` was acknowledged by the broker, in ``requests`` requests."""

    accepted: int
    event_ids: list[str]
    requests: int


@dataclass(frozen=True, slots=True)
class ModelLimit:
    """A per-model limit: USD per window, and its own duration (default: the scope's)."""

    max_budget: Money
    duration: str | None = None


def usd(nanos: int | None) -> Decimal | None:
    """Exact USD of an answer's ``*_nanos`` field."""
    return None if nanos is None else nanos_to_usd(nanos)
