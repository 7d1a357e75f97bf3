"""``spend-ledger api``: the HTTP api, hosting the projector (the store's single writer)."""

from __future__ import annotations

import gc
import ipaddress
import logging
from typing import Annotated

import typer

from ledger.cli.common import console, fail

GC_YOUNG_THRESHOLD = 50_000
SHUTDOWN_GRACE_S = 5  # open requests get this long after SIGTERM


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api(
    host: Annotated[str | None, typer.Option(help="address to bind (default SPEND_LEDGER_API_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default SPEND_LEDGER_API_PORT, 8080)")] = None,
) -> None:
    """Serve the HTTP api (OpenAPI at /docs) and project the topics into DuckDB."""
    import uvicorn
    from pydantic import ValidationError

    from ledger.api.app import create_app
    from ledger.api.fast_paths import FastPaths
    from ledger.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    bind_host = host or settings.api_host
    bind_port = settings.api_port if port is None else port
    if settings.master_key is None and not is_loopback(bind_host):
        raise fail(
            f"refusing to serve on {bind_host} without a master key: set SPEND_LEDGER_MASTER_KEY "
            "(at least 16 characters), or bind 127.0.0.1"
        )
    level = settings.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.master_key is None:
        console.print("[yellow]no SPEND_LEDGER_MASTER_KEY: every route is open (loopback only)[/yellow]")
    server = uvicorn.Server(
        uvicorn.Config(
            FastPaths(create_app(settings)),
            host=bind_host,
            port=bind_port,
            log_level=level if level != "warning" else "warning",
            access_log=level == "debug",
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
    )
    # Fewer, larger young-generation collections: the api allocates per request, and keeps
    # few of those objects (bench.check's p99.9 came from collections, not from requests).
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    server.run()
    if not server.started:
        raise typer.Exit(code=1)
