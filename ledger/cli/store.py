"""Commands on the store: project, spend, sql, replay."""

from __future__ import annotations

import asyncio
import signal
from contextlib import ExitStack
from typing import Annotated

import typer
from pydantic import ValidationError

from ledger.cli.common import console, fail
from ledger.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc


def project(
    until_caught_up: Annotated[
        bool, typer.Option("--until-caught-up", help="stop once every topic is read to where it ended at start")
    ] = False,
) -> None:
    """Project the topics into the store until Ctrl-C/SIGTERM (refused while the api writes it)."""
    from ledger.store.location import data_path_of, store_location
    from ledger.store.projector import Projector
    from ledger.store.schema import StoreUnavailable, open_store
    from ledger.store.writer_lock import StoreBusy, writer_lock
    from ledger.tokenizer import count_tokens

    settings = _settings()
    store = ExitStack()
    try:
        location = store.enter_context(store_location(settings))
        store.enter_context(writer_lock(location))
        connection = open_store(location)
        store.callback(connection.close)
    except (StoreUnavailable, StoreBusy) as exc:
        store.close()
        raise fail(str(exc)) from exc

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stats = await Projector(settings, connection, count_tokens).run(stop, until_caught_up=until_caught_up)
        rows = ", ".join(f"{table} {count}" for table, count in sorted(stats.rows.items()) if count)
        console.print(
            f"projected {stats.messages} messages in {stats.seconds:.1f} s into the store at {data_path_of(settings)}"
            f" ({rows or 'no rows'}; {stats.skipped} skipped)"
        )

    try:
        asyncio.run(run())
    finally:
        store.close()
