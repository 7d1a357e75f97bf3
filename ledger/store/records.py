"""From topic records to store rows: pure functions, one per input topic.

The worker has already refused what is invalid (it sends it to ``dead-letter``, which is
stored from there), so a usage event, command or price book that does not validate here
is skipped, not stored twice. Records the worker wrote itself (``ledger-entries``,
``budget-alerts``) are read with orjson alone: they were built from validated models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
from pydantic import ValidationError

from ledger.domain.admission import ADMISSION_STATES
from ledger.domain.budgets import BudgetCommand
from ledger.domain.errors import InvalidPriceBook, InvalidUsage
from ledger.domain.money import usd_to_nanos
from ledger.domain.prices import load_price_book
from ledger.domain.pricing import TokenCounter, estimate_usage
from ledger.domain.rate_shares import RateLimitRecord
from ledger.domain.windows import epoch_us
from ledger.domain.wire import EPOCH, DeadLetter, decode_usage_message

USAGE_COLUMNS = (
    "event_id",
    "occurred_at",
    "model",
    "provider",
    "user_id",
    "team_id",
    "key_id",
    "end_user",
    "tags",
    "scope_keys",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "has_usage",
    "tokens_estimated",
    "reported_cost_nanos",
    "metadata",
    "source_partition",
    "source_offset",
    "received_at",
    "occurred_at_source",
    "model_group",
)
COMMAND_COLUMNS = (
    "command_id",
    "scope_key",
    "action",
    "issued_at",
    "alias",
    "limit_name",
    "command",
    "source_partition",
    "source_offset",
)
ALERT_COLUMNS = (
    "alert_id",
    "scope_key",
    "alias",
    "limit_name",
    "kind",
    "window_start",
    "window_end",
    "spend_nanos",
    "max_budget_nanos",
    "soft_budget_nanos",
    "threshold_nanos",
    "occurred_at",
    "trigger_id",
    "message",
)
PRICE_BOOK_COLUMNS = ("version", "book_id", "source", "book", "source_offset")
DEAD_LETTER_COLUMNS = (
    "dead_letter_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "stage",
    "reason",
    "detail",
    "event_id",
    "original_key_b64",
    "original_value_b64",
)
ADMISSION_COLUMNS = (
    "request_id",
    "state",
    "event_at",
    "instance_id",
    "scope_keys",
    "model",
    "rate_key",
    "priority",
    "estimate_nanos",
    "estimated_tokens",
    "expires_at",
    "cost_nanos",
    "tokens",
    "event",
)
RATE_LIMIT_COLUMNS = ("record_id", "topic_key", "kind", "issued_at", "record", "source_partition", "source_offset")
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "usage_events": USAGE_COLUMNS,
    "budget_commands": COMMAND_COLUMNS,
    "budget_alerts": ALERT_COLUMNS,
    "price_books": PRICE_BOOK_COLUMNS,
    "dead_letters": DEAD_LETTER_COLUMNS,
    "admission_events": ADMISSION_COLUMNS,
    "rate_limit_records": RATE_LIMIT_COLUMNS,
}


@dataclass(slots=True)
class StoreRows:
    """Rows for each table, in the order read; a row is a tuple in ``TABLE_COLUMNS`` order.
    Rows repeating a key (an event_id seen twice) are left to the insert to drop.
    ``usage_events`` and ``ledger_entries`` hold rows already unpacked (``ledger.store.usage_sql``)."""

    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: {name: [] for name in TABLE_COLUMNS})
    usage_events: pa.Table | None = None
    ledger_entries: pa.Table | None = None


def usage_rows(
    value: bytes, partition: int, offset: int, count_tokens: TokenCounter, received_at_us: int | None = None
) -> list[tuple[Any, ...]]:
    """The valid events of one ``usage`` message, with the token counts they are priced by
    (counted from their text when they report none, as the worker does) and when the
    message reached the log. Validated from the bytes in one pass when the whole message
    is well formed (the common case). An event without ``occurred_at`` occurred then."""
    received_at = None if received_at_us is None else EPOCH + timedelta(microseconds=received_at_us)
    events, _ = decode_usage_message(value, received_at)  # adjustments and invalid events: not events
    rows = []
    for event in events:
        try:
            usage, estimated = estimate_usage(event, count_tokens)
        except InvalidUsage:
            continue
        rows.append(
            (
                event.event_id,
                epoch_us(event.occurred_at),
                event.model,
                event.provider,
                event.user_id,
                event.team_id,
                event.key_id,
                event.end_user,
                list(event.tags),
                list(event.scope_keys()),
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
                usage.reasoning_tokens,
                event.usage is not None,
                estimated,
                None if event.reported_cost is None else usd_to_nanos(event.reported_cost),
                orjson.dumps(event.metadata).decode() if event.metadata else None,
                partition,
                offset,
                received_at_us,
                event.occurred_at_source,
                event.model_group,
            )
        )
    return rows


def command_row(value: bytes, partition: int, offset: int) -> tuple[Any, ...] | None:
    """A valid budget command, or None (the worker dead-letters the invalid ones)."""
    try:
        command = BudgetCommand.model_validate_json(value)
    except ValidationError:
        return None
    return (
        command.command_id,
        command.scope_key,
        command.action,
        command.issued_at,
        command.alias,
        command.limit_name,
        command.model_dump_json(),
        partition,
        offset,
    )


def alert_row(value: bytes) -> tuple[Any, ...]:
    """One ``budget-alerts`` record."""
    alert = orjson.loads(value)
    window_end = alert.get("window_end")
    return (
        alert["alert_id"],
        alert["scope_key"],
        alert.get("alias"),
        alert["limit_name"],
        alert["kind"],
        datetime.fromisoformat(alert["window_start"]),
        None if window_end is None else datetime.fromisoformat(window_end),
        alert["spend_nanos"],
        alert.get("max_budget_nanos"),
        alert.get("soft_budget_nanos"),
        alert["threshold_nanos"],
        datetime.fromisoformat(alert["occurred_at"]),
        alert["trigger_id"],
        alert["message"],
    )


def price_book_row(value: bytes, offset: int) -> tuple[Any, ...] | None:
    """A valid price book, or None (the worker dead-letters the invalid ones)."""
    try:
        book = load_price_book(value)
    except InvalidPriceBook:
        return None
    return (book.version, book.book_id, book.source, book.model_dump_json(), offset)


def dead_letter_row(value: bytes) -> tuple[Any, ...] | None:
    """One ``dead-letter`` record, keyed by a digest of its content (the worker writes
    the same record again when it processes its input again)."""
    try:
        letter = DeadLetter.model_validate_json(value)
    except ValidationError:
        return None
    identity = orjson.dumps(
        [
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.stage,
            letter.reason,
            letter.event_id,
            letter.original_value_b64,
        ]
    )
    return (
        "dl-" + hashlib.sha256(identity).hexdigest()[:32],
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.stage,
        letter.reason,
        letter.detail,
        letter.event_id,
        letter.original_key_b64,
        letter.original_value_b64,
    )


def admission_row(value: bytes) -> tuple[Any, ...]:
    """One ``admissions`` record (the api wrote it from a validated ``AdmissionEvent``, so
    orjson alone reads it). Raises ValueError, KeyError or TypeError for another shape."""
    event = orjson.loads(value)
    if event["state"] not in ADMISSION_STATES:
        raise ValueError(f"unknown admission state {event['state']!r}")
    expires_at = event.get("expires_at")
    return (
        str(event["request_id"]),
        event["state"],
        datetime.fromisoformat(event["at"]),
        str(event["instance_id"]),
        [str(scope) for scope in event.get("scope_keys") or ()],
        event.get("model"),
        event.get("rate_key"),
        event.get("priority"),
        int(event.get("estimate_nanos") or 0),
        int(event.get("estimated_tokens") or 0),
        None if expires_at is None else datetime.fromisoformat(expires_at),
        event.get("cost_nanos"),
        event.get("tokens"),
        value.decode(),
    )


def rate_limit_row(value: bytes, partition: int, offset: int) -> tuple[Any, ...] | None:
    """One ``rate-limits`` record, or None for one the api did not write."""
    try:
        record = RateLimitRecord.model_validate_json(value)
    except ValidationError:
        return None
    return (
        record.record_id,
        record.topic_key,
        record.kind,
        record.issued_at,
        record.model_dump_json(),
        partition,
        offset,
    )
