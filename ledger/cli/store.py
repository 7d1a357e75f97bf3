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
    """Project the topics into the store (run it with the api stopped: one writer) until Ctrl-C/SIGTERM."""
    from ledger.store.location import data_path_of
    from ledger.store.projector import Projector
    from ledger.store.schema import StoreUnavailable, opened_store
    from ledger.tokenizer import count_tokens

    settings = _settings()
    store = ExitStack()
    try:
        connection = store.enter_context(opened_store(settings))
    except StoreUnavailable as exc:
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
