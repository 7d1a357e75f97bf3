"""``spend-ledger check`` and ``spend-ledger publish``: what a gateway does, from the shell.

``check`` asks the running api whether a call may go ahead (exit 0 allowed, 1 over
budget, 2 on errors). ``publish`` sends a JSON-lines file of usage events: every line is
validated first, and a bad line stops everything before anything is sent (unless
``--skip-invalid``); valid events go in requests of up to 10,000.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ledger.cli.common import console, fail
from ledger.cli.remote import JsonFlag, KeyOption, UrlOption, api_failure, open_client, print_json, time_text, usd_text
from ledger.domain.events import BATCH_EVENTS_MAX, UsageEvent

if TYPE_CHECKING:  # the client (httpx) loads only when a command runs
    from ledger.client import CheckAnswer, PublishResult

PUBLISH_EVENTS_MAX = BATCH_EVENTS_MAX  # the api takes at most this many events per request

EXIT_OVER_BUDGET = 1
BAD_LINES_SHOWN_MAX = 20
BAD_LINE_REASON_CHARS_MAX = 300
PROGRESS_BYTES_MIN = 1024 * 1024  # smaller files are read and sent too fast for a bar


def check(
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    team: Annotated[str | None, typer.Option(help="team id")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key id (the key scope; not the bearer key)")] = None,
    end_user: Annotated[str | None, typer.Option("--end-user", help="end user id")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="the model the call would use (per-model limits)")] = None,
    url: UrlOption = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="bearer key (default: SPEND_LEDGER_MASTER_KEY, else SPEND_LEDGER_INGEST_KEY)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """May a call with these scopes go ahead? Exit 0 allowed, 1 over budget, 2 on errors.

    Over budget prints LiteLLM's message, e.g. "Budget has been exceeded! Current cost: X, Max budget: Y".
    """
    from ledger.client import LedgerClientError

    try:
        with open_client(url, api_key) as client:
            answer = client.check(user=user, team=team, key=key, end_user=end_user, tags=tag or (), model=model)
    except LedgerClientError as exc:
        raise api_failure(exc) from exc
    if as_json:
        print_json(answer.model_dump(mode="json"))
    else:
        if answer.allowed:
            console.print("[green]allowed[/green]" + (f" for {escape(answer.model)}" if answer.model else ""))
        else:
            console.print(f"[red]refused[/red] by {escape(answer.scope or '?')}: {escape(answer.message or '')}")
        console.print(_check_table(answer))
    if not answer.allowed:
        raise typer.Exit(code=EXIT_OVER_BUDGET)


def _check_table(answer: CheckAnswer) -> Table:
    table = Table(caption="amounts in USD, times in UTC; the tightest limit of each scope")
    for column in ("scope", "limit", "spent", "max", "remaining", "resets at", "status"):
        table.add_column(column, justify="right" if column in ("spent", "max", "remaining") else "left")
    for scope in answer.scopes:
        binding = min(
            (limit for limit in scope.limits if limit.remaining_budget_nanos is not None),
            key=lambda limit: (not limit.exceeded, limit.remaining_budget_nanos, limit.name),
            default=None,
        )
        table.add_row(
            scope.scope_key + (f" ({scope.alias})" if scope.alias else ""),
            "-" if binding is None else binding.name,
            usd_text(scope.spend_nanos),
            usd_text(scope.max_budget_nanos),
            usd_text(scope.remaining_budget_nanos),
            time_text(scope.budget_reset_at, "-" if binding is None else "never"),
            "[bold red]EXCEEDED[/bold red]" if scope.exceeded else ("no budget" if binding is None else "[green]ok[/]"),
        )
    return table


@dataclass
class _Scan:
    """What the validation pass found: valid events, and bad lines (number, reason)."""

    valid: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    bad_count: int = 0
    bad_lines: set[int] = field(default_factory=set)


def publish(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="a JSON-lines file, one usage event per line; - reads stdin")
    ],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="send the valid events even if some lines are bad")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help=f"events per request (1..{PUBLISH_EVENTS_MAX}); each request is all or nothing")
    ] = PUBLISH_EVENTS_MAX,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """Publish usage events from a JSON-lines file (or stdin) through the api.

    Every line is checked first: a bad line (reported with its number) stops everything before
    anything is sent, unless --skip-invalid. Events without occurred_at get the time the api receives them.
    """
    if not 1 <= batch_size <= PUBLISH_EVENTS_MAX:
        raise fail(f"--batch-size must be within 1..{PUBLISH_EVENTS_MAX}")
    with _readable(source) as path:
        scan = _scan(path)
        if scan.bad_count:
            _report_bad_lines(source, scan, skipped=skip_invalid)
            if not skip_invalid:
                raise fail(f"{scan.bad_count} invalid lines in {escape(source)}; nothing was published")
        if scan.valid == 0:
            raise fail(f"no usage events in {escape(source)}")
        result = _send(path, scan, batch_size, url, key)
    if as_json:
        print_json(
            {
                "accepted": result.accepted,
                "requests": result.requests,
                "skipped_lines": sorted(scan.bad_lines),
            }
        )
        return
    skipped = f"; skipped {scan.bad_count} invalid lines" if scan.bad_count else ""
    console.print(f"published {result.accepted} events in {result.requests} requests{skipped}")


@contextmanager
def _readable(source: str) -> Iterator[Path]:
    """The file to read twice (once to check, once to send); stdin is spooled to a temporary file."""
    if source != "-":
        path = Path(source)
        if not path.is_file():
            raise fail(f"no such file: {escape(source)}")
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="spend-ledger-publish-", suffix=".jsonl") as spooled:
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.flush()
        yield Path(spooled.name)


def _progress(description: str, shown: bool, *, in_bytes: bool = False) -> Progress:
    """A bar on stderr, shown only on a terminal and for long work."""
    errors = Console(stderr=True)
    return Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn() if in_bytes else MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
        disable=not (shown and errors.is_terminal),
    )


def _scan(path: Path) -> _Scan:
    """Check every line; keep the first bad ones' reasons and every bad line's number."""
    scan = _Scan()
    received_at = datetime.now(UTC).isoformat()
    size = path.stat().st_size
    with _progress("checking", size >= PROGRESS_BYTES_MIN, in_bytes=True) as progress, path.open("rb") as lines:
        task = progress.add_task("checking", total=size)
        for number, line in enumerate(lines, start=1):
            progress.advance(task, len(line))
            if not line.strip():
                continue
            reason = _invalid(line, received_at)
            if reason is None:
                scan.valid += 1
                continue
            scan.bad_count += 1
            scan.bad_lines.add(number)
            if len(scan.bad) < BAD_LINES_SHOWN_MAX:
                scan.bad.append((number, reason))
    return scan


def _invalid(line: bytes, received_at: str) -> str | None:
    """Why a line is not a usage event, or None. An event without ``occurred_at`` is
    checked as if received now (the api stamps it so)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(value, dict):
        return f"expected a JSON object (one usage event), got {type(value).__name__}"
    try:
        UsageEvent.model_validate(value if "occurred_at" in value else {**value, "occurred_at": received_at})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        reason = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'event'}: {error['msg']}" for error in errors)
        return reason[:BAD_LINE_REASON_CHARS_MAX]
    return None


def _report_bad_lines(source: str, scan: _Scan, *, skipped: bool) -> None:
    errors = Console(stderr=True)
    for number, reason in scan.bad:
        errors.print(f"{escape(source)}:{number}: {escape(reason)}", highlight=False, soft_wrap=True)
    if scan.bad_count > len(scan.bad):
        errors.print(f"... and {scan.bad_count - len(scan.bad)} more invalid lines")
    if skipped:
        errors.print(f"[yellow]skipping {scan.bad_count} invalid lines[/yellow]")


def _events(path: Path, bad_lines: set[int]) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip() and number not in bad_lines:
                event: dict[str, Any] = orjson.loads(line)
                yield event


def _send(path: Path, scan: _Scan, batch_size: int, url: str | None, key: str | None) -> PublishResult:
    from ledger.client import LedgerClientError

    try:
        with open_client(url, key) as client, _progress("publishing", scan.valid > batch_size) as progress:
            task = progress.add_task("publishing", total=scan.valid)
            return client.publish(
                _events(path, scan.bad_lines),
                events_per_request_max=batch_size,
                on_request=lambda count: progress.advance(task, count),
            )
    except LedgerClientError as exc:
        raise api_failure(exc) from exc
