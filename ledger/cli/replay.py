"""``spend-ledger replay``: recompute every budget from the store, diff it against live
state, and with ``--apply`` publish the adjustments that make live equal it."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from ledger.cli.common import console, fail, parse_moment
from ledger.domain.budgets import BudgetState, LimitState
from ledger.domain.money import format_usd

if TYPE_CHECKING:  # the replay needs DuckDB, which a client-only install does not have
    from ledger.replay.compare import Difference


def replay(
    prices: Annotated[Path | None, typer.Option("--prices", help="price book JSON (default: the current book)")] = None,
    reprice_from: Annotated[
        str | None, typer.Option("--from", help="reprice only events at or after this ISO 8601 time")
    ] = None,
    reprice_to: Annotated[
        str | None, typer.Option("--to", help="reprice only events before this ISO 8601 time")
    ] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="only this scope key (repeatable)")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="print every budget as it was at this ISO 8601 time")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="publish the adjustments that make live state equal the replay")
    ] = False,
) -> None:
    """Replay every event and budget command from the store under a price book; print how
    live state would change (or, with --as-of, every budget at that time)."""
    import duckdb
    from pydantic import ValidationError

    from ledger.domain.errors import InvalidPriceBook
    from ledger.domain.prices import load_price_book
    from ledger.pricebooks.genai import genai_prices_book
    from ledger.replay.compare import compare_states
    from ledger.replay.engine import REPLAY_STAGES
    from ledger.replay.service import (
        StoreBehind,
        apply_replay,
        current_book,
        default_as_of,
        live_states,
        replay_store,
    )
    from ledger.settings import load_settings
    from ledger.store.schema import StoreUnavailable, opened_store

    if apply and as_of is not None:
        raise fail("--apply makes live state equal the replay now; it does not go with --as-of")
    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    moment = parse_moment(as_of, "--as-of")
    try:
        book = load_price_book(prices.read_bytes()) if prices is not None else None
    except (OSError, InvalidPriceBook) as exc:
        raise fail(f"cannot use --prices {prices}: {exc}") from exc
    store = ExitStack()
    try:
        connection = store.enter_context(opened_store(settings, read_only=True))
    except StoreUnavailable as exc:
        raise fail(str(exc)) from exc
    try:
        book = book or current_book(connection, genai_prices_book)
        at = moment or default_as_of(connection, datetime.now(UTC))
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("replaying", total=len(REPLAY_STAGES) + (0 if moment else 1))

            def on_stage(stage: str) -> None:
                progress.update(task, description=f"replay: {stage}", completed=REPLAY_STAGES.index(stage))

            result = replay_store(
                connection,
                book,
                at,
                settings,
                scopes=tuple(scope or ()),
                reprice_from=parse_moment(reprice_from, "--from"),
                reprice_to=parse_moment(reprice_to, "--to"),
                on_stage=on_stage,
            )
            if moment is None:
                progress.update(task, description="reading live state", completed=len(REPLAY_STAGES))
                live = asyncio.run(live_states(settings))
        console.print(
            f"replayed {result.events} events at {at.isoformat()} under book {book.book_id} ({book.version[:19]}):"
            f" {result.charged} charged, {result.unpriced} unpriced"
        )
        if moment is not None:
            _print_states(result.states)
            return
        differences = compare_states(live, result.states, at)
        if scope:
            differences = [d for d in differences if d.scope_key in set(scope)]
        _print_differences(differences)
        if apply:
            applied = asyncio.run(apply_replay(settings, connection, result))
            if applied.adjustments:
                console.print(
                    f"published {applied.adjustments} adjustments (net {format_usd(applied.net_nanos)} USD);"
                    " the worker applies them to live state"
                )
            else:
                console.print("nothing to apply: every event is charged what the replay says")
    except StoreBehind as exc:
        raise fail(str(exc)) from exc
    except (duckdb.Error, TimeoutError, OSError) as exc:
        raise fail(f"replay failed: {exc}") from exc
    finally:
        store.close()


def _print_differences(differences: list[Difference]) -> None:
    if not differences:
        console.print("live state equals the replay")
        return
    table = Table(title=f"{len(differences)} differences between live state and the replay")
    for column in ("scope", "field", "live", "replay", "change (USD)"):
        table.add_column(column, justify="right" if column == "change (USD)" else "left")
    for difference in differences:
        delta = difference.delta_nanos
        table.add_row(
            difference.scope_key,
            difference.field.removesuffix("_nanos"),
            _shown(difference.field, difference.live),
            _shown(difference.field, difference.replayed),
            "" if delta is None else ("+" if delta > 0 else "") + format_usd(delta),
        )
    console.print(table)


def _shown(field: str, value: object) -> str:
    if field.endswith("_nanos") and isinstance(value, int):
        return format_usd(value)
    if field.endswith("crossings") and isinstance(value, frozenset):
        return ", ".join(f"{kind} at {format_usd(threshold)}" for kind, threshold in sorted(value)) or "none"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _print_states(states: dict[str, BudgetState]) -> None:
    table = Table(title="Budgets as replayed")
    for column in ("scope", "total spend (USD)", "limit", "window", "window spend (USD)", "max (USD)", "status"):
        table.add_column(column)
    for scope in sorted(states):
        state = states[scope]
        rows: list[tuple[str, LimitState | None]] = [(limit.spec.limit_name, limit) for limit in state.limits]
        for name, limit in rows or [("", None)]:
            table.add_row(
                scope,
                format_usd(state.total_spend_nanos),
                name,
                "" if limit is None else f"{limit.window_start:%Y-%m-%d %H:%M:%S} +",
                "" if limit is None else format_usd(limit.spend_nanos),
                "" if limit is None or limit.spec.max_budget_nanos is None else format_usd(limit.spec.max_budget_nanos),
                "" if limit is None else ("exceeded" if limit.exceeded else "ok"),
            )
    console.print(table)
