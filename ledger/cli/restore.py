"""``spend-ledger restore``: rebuild live state from the store when the log is gone
(a new dev broker, Kafka retention, a lost changelog). ``spend-ledger dev`` runs the same
by itself when it finds an empty broker and a store with history."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.cli.common import console, fail, parse_moment

if TYPE_CHECKING:
    import duckdb

    from ledger.restore.plan import RestorePlan
    from ledger.restore.run import RestoreOutcome
    from ledger.settings import Settings


def progress_bar(out: Console) -> Progress:
    """The bar a restore shows while it works (nothing when ``out`` is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )


def plan_and_publish(
    settings: Settings,
    connection: duckdb.DuckDBPyConnection,
    progress: Progress,
    *,
    as_of: datetime | None = None,
    dry_run: bool = False,
) -> RestoreOutcome:
    """``restore_from_store`` with each stage on ``progress``."""
    from ledger.restore.plan import PLAN_STAGES
    from ledger.restore.run import restore_from_store

    planning = progress.add_task("restore: reading the store", total=len(PLAN_STAGES))
    publishing = progress.add_task("restore: publishing", total=None, visible=False)

    def on_stage(stage: str) -> None:
        progress.update(planning, description=f"restore: {stage}", completed=PLAN_STAGES.index(stage))

    def on_published(done: int, total: int) -> None:
        progress.update(planning, completed=len(PLAN_STAGES))
        progress.update(publishing, completed=done, total=total, visible=True)

    return asyncio.run(
        restore_from_store(
            settings, connection, as_of=as_of, dry_run=dry_run, on_stage=on_stage, on_published=on_published
        )
    )


def wait_for_worker(settings: Settings, plan: RestorePlan, progress: Progress) -> None:
    """Block until the worker has put every restored scope in place."""
    from ledger.restore.run import wait_applied

    task = progress.add_task("restore: the worker applies it", total=len(plan.states))

    def on_applied(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    asyncio.run(wait_applied(settings, plan, on_applied=on_applied))


def live_records(settings: Settings) -> int:
    """Records the broker holds on the ledger's topics (0: an empty, new log)."""
    from ledger.kafka import records_on
    from ledger.topics import internal_topic_names, topic_names

    names = (*topic_names(settings.topic_prefix).all(), *internal_topic_names(settings.topic_prefix).all())
    return asyncio.run(records_on(settings, names))


def restore(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="restore live state as it was at this ISO 8601 time (default: now)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be restored; publish nothing")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="restore even though the broker holds records (each scope's state is replaced)"),
    ] = False,
    wait: Annotated[bool, typer.Option(help="wait until a running worker has applied the restore")] = False,
) -> None:
    """Rebuild live state from the store: every scope's budget state, the event ids
    the dedup needs, the price book, rate limits and open holds, published for the worker.
    Run it with the api stopped (it holds the store); see deploy/PRODUCTION.md."""
    import duckdb
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError

    from ledger.restore.plan import store_has_history
    from ledger.settings import load_settings
    from ledger.store.location import data_path_of
    from ledger.store.schema import StoreUnavailable, opened_store

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    moment = parse_moment(as_of, "--as-of")
    store = ExitStack()
    try:
        connection = store.enter_context(opened_store(settings, read_only=True))
    except StoreUnavailable as exc:
        raise fail(str(exc)) from exc
    try:
        if not store_has_history(connection):
            raise fail(f"the store at {data_path_of(settings)} holds nothing to restore")
        if not dry_run and not force:
            held = live_records(settings)
            if held:
                raise fail(
                    f"the broker already holds {held:,} records on the ledger's topics: restore replaces each "
                    "scope's live state with the store's, so run it on a new, empty log, or with the workers "
                    "stopped and the store caught up (deploy/PRODUCTION.md, 'Retention and restore'), with --force"
                )
        with progress_bar(console) as progress:
            outcome = plan_and_publish(settings, connection, progress, as_of=moment, dry_run=dry_run)
            if wait and not dry_run:
                wait_for_worker(settings, outcome.plan, progress)
        console.print(outcome.summary())
    except (duckdb.Error, KafkaError, TimeoutError, OSError) as exc:
        raise fail(f"restore failed: {exc}") from exc
    finally:
        store.close()
