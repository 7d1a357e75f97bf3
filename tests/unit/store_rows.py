"""Rows for small stores built in unit tests, through the real writer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from ledger.domain.budgets import BudgetCommand, BudgetSpec, CommandAction
from ledger.store.location import StoreLocation
from ledger.store.records import StoreRows, command_row
from ledger.store.schema import open_store
from ledger.store.usage_sql import ledger_entry_rows
from ledger.store.writer import append

_ids = itertools.count()


def at(hour: int, minute: int = 0, *, day: int = 3, month: int = 11) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


def entry(
    cost_nanos: int,
    *scopes: str,
    model: str = "gpt-4o",
    occurred_at: datetime | None = None,
    kind: str = "charge",
    prompt: int = 100,
    completion: int = 10,
) -> dict[str, Any]:
    """A ledger entry (as the worker writes it) charging ``global:*`` and ``scopes``."""
    number = next(_ids)
    return {
        "entry_id": f"entry-{number}",
        "event_id": f"evt-{number}",
        "kind": kind,
        "occurred_at": (occurred_at or at(9)).isoformat(),
        "model": model,
        "provider": "openai",
        "priced_as": model,
        "scope_keys": ["global:*", *scopes],
        "cost_nanos": cost_nanos,
        "cost_source": "price_book",
        "price_book_version": "book-1",
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        "tokens_estimated": False,
    }


def command(
    scope_key: str,
    action: CommandAction,
    issued_at: datetime,
    *budgets: BudgetSpec,
    alias: str | None = None,
    limit_name: str | None = None,
) -> tuple[Any, ...]:
    """A budget_commands row, through the projector's own record function."""
    number = next(_ids)
    body = BudgetCommand(
        command_id=f"cmd-{number}",
        scope_key=scope_key,
        action=action,
        issued_at=issued_at,
        budgets=budgets,
        alias=alias,
        limit_name=limit_name,
    )
    row = command_row(body.model_dump_json().encode(), 0, number)
    assert row is not None
    return row


def dead_letter(
    topic: str, stage: str, reason: str, detail: str, event_id: str | None = None, *, offset: int, partition: int = 0
) -> tuple[Any, ...]:
    """A dead_letters row for the record at ``offset`` of ``topic``."""
    return (f"dl-{next(_ids)}", topic, partition, offset, stage, reason, detail, event_id, None, "e30=")


def entry_table(message: bytes) -> pa.Table:
    """The ``ledger_entries`` rows of one ``ledger-entries`` message, as the projector unpacks it."""
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        table, refused = ledger_entry_rows(connection, [message])
    assert refused == [], message
    return table


def build_store(
    store: StoreLocation,
    *,
    entries: Sequence[dict[str, Any]] = (),
    commands: Sequence[tuple[Any, ...]] = (),
    dead_letters: Sequence[tuple[Any, ...]] = (),
) -> StoreLocation:
    """Write the rows into a new store and close it (readers open it read-only)."""
    rows = StoreRows()
    if entries:
        rows.ledger_entries = entry_table(orjson.dumps({"batch_id": "test-batch", "entries": list(entries)}))
    rows.tables["budget_commands"].extend(commands)
    rows.tables["dead_letters"].extend(dead_letters)
    connection = open_store(store)
    try:
        append(connection, rows, {})
    finally:
        connection.close()
    return store
