"""A whole restore: plan it from the store, publish it for the worker, wait until applied.

The records' formats are the worker's own (``streams.restore``); this is the one call the
CLI, ``spend-ledger dev`` and a Python caller use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import duckdb

from ledger.pricebooks.genai import genai_prices_book
from ledger.restore.plan import RestorePlan, plan_restore
from ledger.settings import Settings

Progress = Callable[[int, int], None]  # (done, total)
WAIT_TIMEOUT_S = 300.0


def _quiet(done: int, total: int) -> None:
    pass


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    """What a restore did, for its one-line summary."""

    plan: RestorePlan
    records: int  # published (0 for a dry run)
    seconds: float
    dry_run: bool = False

    def summary(self) -> str:
        plan = self.plan
        verb = "would restore" if self.dry_run else "restored"
        book = "the bundled price book" if plan.price_book is None else f"price book {plan.price_book.book_id}"
        return (
            f"{verb} {len(plan.states):,} scopes ({plan.limited_scopes:,} with budgets from {plan.commands:,} budget "
            f"commands), {len(plan.event_ids):,} event ids, {book}, {len(plan.rate_limits):,} rate limits and "
            f"{len(plan.holds):,} open holds as of {plan.as_of.isoformat(timespec='seconds')}"
            f" ({plan.events:,} stored events) in {self.seconds:.1f} s"
        )


async def restore_from_store(
    settings: Settings,
    connection: duckdb.DuckDBPyConnection,
    *,
    as_of: datetime | None = None,
    dry_run: bool = False,
    on_stage: Callable[[str], None] = lambda stage: None,
    on_published: Progress = _quiet,
) -> RestoreOutcome:
    """Plan a restore from the store behind ``connection`` (read-only is enough) as of
    ``as_of`` (default now) and, unless ``dry_run``, publish it; returns once the broker
    has every record. ``on_stage`` hears each of ``PLAN_STAGES``, ``on_published`` the
    records sent. The worker applies it in the background (``wait_applied``)."""
    started = time.monotonic()
    plan = plan_restore(connection, settings, genai_prices_book, as_of=as_of, on_stage=on_stage)
    if dry_run:
        return RestoreOutcome(plan, 0, time.monotonic() - started, dry_run=True)
    from streams.restore import publish_restore  # the worker's record formats

    records = await publish_restore(settings, plan, on_published)
    return RestoreOutcome(plan, records.total, time.monotonic() - started)


async def wait_applied(
    settings: Settings, plan: RestorePlan, timeout_s: float = WAIT_TIMEOUT_S, on_applied: Progress = _quiet
) -> None:
    """Wait until the worker has put every scope of ``plan`` in place; ``TimeoutError``
    after ``timeout_s``."""
    from streams.restore import wait_restored

    await wait_restored(settings, plan, timeout_s, on_applied)
