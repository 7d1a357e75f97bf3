"""JSON Schemas of every record on the wire, generated from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ledger.domain.admission import AdmissionEvent
from ledger.domain.budgets import BudgetAlert, BudgetCommand, BudgetState
from ledger.domain.events import UsageBatch, UsageEvent
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import LedgerEntry, LedgerEntryBatch
from ledger.domain.rate_shares import RateLimitRecord
from ledger.domain.snapshots import BudgetSnapshot
from ledger.domain.wire import DeadLetter

WIRE_MODELS: dict[str, type[BaseModel]] = {
    "UsageEvent": UsageEvent,
    "UsageBatch": UsageBatch,
    "BudgetCommand": BudgetCommand,
    "PriceBook": PriceBook,
    "LedgerEntry": LedgerEntry,
    "LedgerEntryBatch": LedgerEntryBatch,
    "BudgetState": BudgetState,
    "BudgetSnapshot": BudgetSnapshot,
    "BudgetAlert": BudgetAlert,
    "DeadLetter": DeadLetter,
    "AdmissionEvent": AdmissionEvent,
    "RateLimitRecord": RateLimitRecord,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one wire record, as it is parsed."""
    if name not in WIRE_MODELS:
        raise KeyError(f"unknown record {name!r}; known: {', '.join(WIRE_MODELS)}")
    schema = WIRE_MODELS[name].model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every wire record's schema, by record name."""
    return {name: json_schema(name) for name in WIRE_MODELS}
