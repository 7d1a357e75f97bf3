"""spend-ledger: an event-sourced spend ledger for LLM usage.

The SDK is importable from here (``from ledger import BudgetManager``); its names load
on first use, so the worker and the domain do not pay for the SDK's imports.

``ledger.admission(...)`` (``async with``) holds a call's estimated cost and rate share
before it is made, so concurrent callers cannot overspend a budget (``ledger.sdk.admission``).

``ledger.max_budget`` is the process-wide budget in USD (``None``: no limit), LiteLLM's
``litellm.max_budget``: ``ledger.guard()`` and the LiteLLM callback refuse calls once
``ledger.current_cost()`` exceeds it.
"""

from __future__ import annotations

import importlib
from decimal import Decimal
from typing import TYPE_CHECKING, Any

max_budget: Decimal | int | float | str | None = None

# name -> module that defines it
_EXPORTS = {
    "BudgetManager": "ledger.sdk.budget_manager",
    "BudgetExceededError": "ledger.sdk.guard",
    "current_cost": "ledger.sdk.guard",
    "current_cost_nanos": "ledger.sdk.guard",
    "guard": "ledger.sdk.guard",
    "record_cost": "ledger.sdk.guard",
    "reset_current_cost": "ledger.sdk.guard",
    "SpendLedgerProducer": "ledger.sdk.producer",
    "HttpUsagePublisher": "ledger.sdk.producer",
    "SyncProducer": "ledger.sdk.producer",
    "publish_usage": "ledger.sdk.producer",
    "Published": "ledger.sdk.producer",
    "PublishUnconfirmed": "ledger.sdk.producer",
    "InvalidUsageEvent": "ledger.sdk.producer",
    "subscribe_alerts": "ledger.sdk.alerts",
    "UsageEvent": "ledger.domain.events",
    "TokenUsage": "ledger.domain.events",
    "BudgetAlert": "ledger.domain.budgets",
    "LedgerClient": "ledger.client",
    "AsyncLedgerClient": "ledger.client",
    "SpendLedgerCallback": "ledger.integrations.litellm_callback",
    "admission": "ledger.sdk.admission",
    "admission_sync": "ledger.sdk.admission",
    "AdmissionHold": "ledger.sdk.admission",
    "SyncAdmissionHold": "ledger.sdk.admission",
    "RateLimitExceededError": "ledger.sdk.admission",
}

__all__ = [
    "AdmissionHold",
    "AsyncLedgerClient",
    "BudgetAlert",
    "BudgetExceededError",
    "BudgetManager",
    "HttpUsagePublisher",
    "InvalidUsageEvent",
    "LedgerClient",
    "PublishUnconfirmed",
    "Published",
    "RateLimitExceededError",
    "SpendLedgerCallback",
    "SpendLedgerProducer",
    "SyncAdmissionHold",
    "SyncProducer",
    "TokenUsage",
    "UsageEvent",
    "admission",
    "admission_sync",
    "current_cost",
    "current_cost_nanos",
    "guard",
    "max_budget",
    "publish_usage",
    "record_cost",
    "reset_current_cost",
    "subscribe_alerts",
]

if TYPE_CHECKING:
    from ledger.client import AsyncLedgerClient, LedgerClient
    from ledger.domain.budgets import BudgetAlert
    from ledger.domain.events import TokenUsage, UsageEvent
    from ledger.integrations.litellm_callback import SpendLedgerCallback
    from ledger.sdk.admission import (
        AdmissionHold,
        RateLimitExceededError,
        SyncAdmissionHold,
        admission,
        admission_sync,
    )
    from ledger.sdk.alerts import subscribe_alerts
    from ledger.sdk.budget_manager import BudgetManager
    from ledger.sdk.guard import (
        BudgetExceededError,
        current_cost,
        current_cost_nanos,
        guard,
        record_cost,
        reset_current_cost,
    )
    from ledger.sdk.producer import (
        HttpUsagePublisher,
        InvalidUsageEvent,
        Published,
        PublishUnconfirmed,
        SpendLedgerProducer,
        SyncProducer,
        publish_usage,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
