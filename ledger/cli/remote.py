"""What the commands that talk to a running api share: ``--url``/``--key``, the client,
error exits, and how amounts and times are shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from ledger.cli.common import fail
from ledger.domain.money import format_usd
from ledger.settings import Settings, load_settings

if TYPE_CHECKING:  # the client (httpx) loads only for the commands that use it
    from ledger.client import LedgerClient, LedgerClientError

REQUEST_TIMEOUT_S = 60.0  # a budget write waits up to api_apply_wait_s for the worker
FIELD_ERRORS_SHOWN_MAX = 10

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="the api's URL (default: SPEND_LEDGER_API_URL, or http://127.0.0.1:8080)"),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        "--api-key",
        help="bearer key (default: SPEND_LEDGER_MASTER_KEY, else SPEND_LEDGER_INGEST_KEY)",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print the api's answer as JSON (amounts in *_nanos)")]


def settings_or_fail() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {escape(str(exc))}") from exc


def open_client(url: str | None, key: str | None) -> LedgerClient:
    """A client of ``url`` (default: the settings' api_url) with ``key`` (default: the
    settings' master key, else the ingest key)."""
    from ledger.client import LedgerClient
    from ledger.client.calls import key_of

    settings = settings_or_fail()
    return LedgerClient(url or settings.api_url, key if key is not None else key_of(settings), REQUEST_TIMEOUT_S)


def api_failure(exc: LedgerClientError) -> typer.Exit:
    """Print what went wrong and how to fix it; the exit (code 2) to raise."""
    from ledger.client import LedgerApiError, PublishFailed

    cause = exc.cause if isinstance(exc, PublishFailed) else exc
    message = str(exc) if isinstance(exc, PublishFailed) else exc.message
    if isinstance(cause, LedgerApiError):
        if not isinstance(exc, PublishFailed):
            message = f"{message} (HTTP {cause.status})"
        if cause.status in (401, 403):
            message += (
                "\nhint: pass --key, or set SPEND_LEDGER_MASTER_KEY (`spend-ledger dev` prints the master key it uses)"
            )
        for error in cause.fields[:FIELD_ERRORS_SHOWN_MAX]:
            where = ".".join(str(part) for part in error.get("loc", ()))
            line = f"{where}: {error.get('msg', '')}"
            if line not in cause.message:  # the api's message names the first few itself
                message += f"\n  {line}"
        if len(cause.fields) > FIELD_ERRORS_SHOWN_MAX:
            message += f"\n  and {len(cause.fields) - FIELD_ERRORS_SHOWN_MAX} more field errors"
    return fail(escape(message))


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def usd_text(nanos: int | None, missing: str = "-") -> str:
    return missing if nanos is None else format_usd(nanos)


def time_text(moment: datetime | None, missing: str = "never") -> str:
    """A time in UTC, to the second."""
    return missing if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
