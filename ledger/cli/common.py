"""What every command shares: the console and the error exit."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.console import Console

# Wide enough for the tables when piped (Rich falls back to 80 columns without a terminal).
console = Console(width=max(Console().width, 132))


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise the returned exit (code 2). Not wrapped:
    a path in it stays whole to copy (Rich folds at 80 columns off a terminal, mid-word)."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def parse_moment(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time; one without a zone is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2025-11-03 or 2025-11-03T09:00:00Z") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
