"""Adjustments: corrections a replay publishes so that live state equals the replay.

An adjustment changes what one event costs, by ``cost_nanos`` (negative when the event
is now cheaper), on every scope the event charged, at the event's own time (so it lands
in the event's window). It travels on the ``usage`` topic like an event and is deduplicated
by ``adjustment_id``, which is derived from what it corrects: publishing the same
correction twice changes nothing.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, model_validator

from ledger.domain.events import FROZEN, SCHEMA_VERSION, EventId, ModelName, TokenUsage
from ledger.domain.money import MAX_NANOS
from ledger.domain.pricing import LedgerEntry
from ledger.domain.scopes import parse_scope_key

ADJUSTMENT_PREFIX = "adj-"


def _checked_scope_key(value: str) -> str:
    parse_scope_key(value)
    return value


class LedgerAdjustment(BaseModel):
    """A change to one event's cost, published by ``replay --apply``."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    adjustment_id: EventId
    event_id: EventId
    occurred_at: AwareDatetime
    model: ModelName
    provider: ModelName | None = None
    scope_keys: tuple[Annotated[str, AfterValidator(_checked_scope_key)], ...] = Field(min_length=1, max_length=64)
    cost_nanos: int = Field(ge=-MAX_NANOS, le=MAX_NANOS)
    price_book_version: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _nonzero(self) -> Self:
        if self.cost_nanos == 0:
            raise ValueError("an adjustment of 0 changes nothing; do not publish it")
        return self


def adjustment_id(event_id: str, charged_nanos: int, target_nanos: int, price_book_version: str) -> str:
    """The id of the correction from what an event was charged to what it should cost
    under a book: the same correction always gets the same id."""
    identity = f"{event_id}\x1f{charged_nanos}\x1f{target_nanos}\x1f{price_book_version}"
    return ADJUSTMENT_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:40]


def adjustment_entry(adjustment: LedgerAdjustment) -> LedgerEntry:
    """The ledger entry of an adjustment (kind ``adjustment``, no tokens of its own)."""
    return LedgerEntry(
        entry_id=adjustment.adjustment_id,
        event_id=adjustment.event_id,
        kind="adjustment",
        occurred_at=adjustment.occurred_at,
        model=adjustment.model,
        provider=adjustment.provider,
        scope_keys=adjustment.scope_keys,
        cost_nanos=adjustment.cost_nanos,
        cost_source="replay",
        price_book_version=adjustment.price_book_version,
        usage=TokenUsage(),
    )
