"""Commands that run the service, and the error they give on a client-only install.

``pip install spend-ledger`` is the client side (SDK, LiteLLM callback, BudgetManager and
the commands that talk to a running api); the worker, the api and the store come
with the ``server`` extra (the embedded broker of ``spend-ledger dev`` with ``dev``). A
server command on a client-only install stops before it starts anything and names the
install line, instead of failing on an ``ImportError`` halfway through.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from rich.markup import escape

from ledger.cli.common import fail

SERVER_INSTALL = "pip install 'spend-ledger[server]'"

# import name -> distribution, one per package the `server` extra brings
SERVER_MODULES = {
    "faust": "faust-streaming",
    "duckdb": "duckdb",
    "pyarrow": "pyarrow",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
}

P = ParamSpec("P")
R = TypeVar("R")


def missing_server_distributions() -> list[str]:
    """The server extra's distributions this environment cannot import (empty: all there)."""
    return [dist for module, dist in SERVER_MODULES.items() if not _importable(module)]


def _importable(module: str) -> bool:
    if module in sys.modules:  # imported already (faust's own __spec__ is None: find_spec would raise)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses the name (the tests' stand-in for a client-only install)
        return False


def require_server(command: str) -> None:
    """Stop ``spend-ledger <command>`` with the install line when the server extra is missing."""
    missing = missing_server_distributions()
    if missing:
        raise fail(
            escape(
                f"`spend-ledger {command}` runs the service, which this install does not include "
                f"(missing {', '.join(missing)}): {SERVER_INSTALL}"
            )
        )


def server_command(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a command first check that the server extra is installed.

    The wrapper keeps the signature (``functools.wraps``), so Typer reads the same
    options, and ``--help`` still works on a client-only install.
    """

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            require_server(command)
            return function(*args, **kwargs)

        return run

    return wrap
