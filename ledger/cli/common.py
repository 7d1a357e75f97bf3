"""What every command shares: the console and the error exit."""

from __future__ import annotations

import typer
from rich.console import Console

# Wide enough for the tables when piped (Rich falls back to 80 columns without a terminal).
console = Console(width=max(Console().width, 132))


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise the returned exit (code 2)."""
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)
