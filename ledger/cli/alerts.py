"""``spend-ledger alerts ...``: follow the ``budget-alerts`` topic live (``tail``, straight
from Kafka), or list the alerts the store holds (``list``, through the api)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger.cli.common import console, fail, parse_moment
from ledger.cli.remote import (
    JsonFlag,
    KeyOption,
    UrlOption,
    api_failure,
    open_client,
    print_json,
    settings_or_fail,
    time_text,
    usd_text,
)
from ledger.domain.budgets import AlertKind, BudgetAlert
from ledger.settings import Settings

ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
KIND_STYLES = {"exceeded": "bold red", "soft-threshold": "yellow", "recovered": "green", "reset": "cyan"}
EXIT_TIMED_OUT = 1

alerts_app = typer.Typer(
    help="Budget alerts: follow them live from Kafka (tail) or list the stored ones (list).", no_args_is_help=True
)

ScopeFilter = Annotated[str | None, typer.Option("--scope", help="only this scope key, e.g. team:ml")]
KindFilter = Annotated[str | None, typer.Option("--kind", help=f"only this kind: {', '.join(ALERT_KINDS)}")]


@alerts_app.command("tail")
def alerts_tail(
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="print every alert the topic holds first")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="stop after this many alerts", min=1)] = None,
    scope: ScopeFilter = None,
    kind: KindFilter = None,
    timeout_s: Annotated[
        float | None,
        typer.Option("--timeout-s", help="stop after this many seconds (exit 1 if --limit alerts did not come)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print each alert as one JSON line")] = False,
) -> None:
    """Follow the budget-alerts topic live, until Ctrl-C or --limit alerts.

    Reads KAFKA_BOOTSTRAP_SERVERS directly (every partition, no consumer group), from the
    topic's end unless --from-beginning.
    """
    from aiokafka.errors import KafkaError

    if kind is not None and kind not in ALERT_KINDS:
        raise fail(f"unknown alert kind {kind!r}; expected one of {', '.join(ALERT_KINDS)}")
    settings = settings_or_fail()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its errors are reported below, once
    try:
        printed = asyncio.run(_tail(settings, from_beginning, limit, scope, kind, timeout_s, as_json))
    except KeyboardInterrupt:
        return
    except KafkaError as exc:
        raise fail(f"cannot follow alerts on {settings.kafka_bootstrap_servers}: {escape(str(exc))}") from exc
    except RuntimeError as exc:  # AlertTopicMissing
        raise fail(escape(str(exc))) from exc
    if timeout_s is not None and limit is not None and printed < limit:
        Console(stderr=True).print(f"[yellow]timed out[/yellow] after {timeout_s:g} s with {printed} of {limit} alerts")
        raise typer.Exit(code=EXIT_TIMED_OUT)


async def _tail(
    settings: Settings,
    from_beginning: bool,
    limit: int | None,
    scope: str | None,
    kind: str | None,
    timeout_s: float | None,
    as_json: bool,
) -> int:
    from ledger.alert_feed import follow_alerts

    errors = Console(stderr=True)
    printed = 0

    def skipped(reason: str) -> None:
        errors.print(f"[yellow]skipped[/yellow] {escape(reason)}")

    def ready() -> None:
        if not as_json:
            errors.print(f"following {settings.topic_prefix}budget-alerts; Ctrl-C stops", style="dim")

    feed = follow_alerts(settings, from_beginning=from_beginning, on_invalid=skipped, on_ready=ready)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s), contextlib.aclosing(feed) as alerts:
            async for alert in alerts:
                if (scope is not None and alert.scope_key != scope) or (kind is not None and alert.kind != kind):
                    continue
                _print_alert(alert, as_json)
                printed += 1
                if limit is not None and printed >= limit:
                    break
    return printed


def _print_alert(alert: BudgetAlert, as_json: bool) -> None:
    if as_json:
        typer.echo(alert.model_dump_json())
        return
    where = alert.scope_key + (f" ({alert.alias})" if alert.alias else "")
    style = KIND_STYLES.get(alert.kind, "default")
    console.print(
        f"{time_text(alert.occurred_at)} [{style}]{alert.kind:<14}[/] {escape(f'{where} [{alert.limit_name}]')}"
        f"  {escape(alert.message)}",
        highlight=False,
        soft_wrap=True,
    )


@alerts_app.command("list")
def alerts_list(
    scope: ScopeFilter = None,
    kind: KindFilter = None,
    since: Annotated[str | None, typer.Option(help="occurred at or after this ISO 8601 time (no zone: UTC)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many (1..10000)", min=1, max=10_000)] = 100,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The latest alerts the store holds, newest first (through the api)."""
    from ledger.client import LedgerClientError

    if kind is not None and kind not in ALERT_KINDS:
        raise fail(f"unknown alert kind {kind!r}; expected one of {', '.join(ALERT_KINDS)}")
    moment = parse_moment(since, "--since")
    try:
        with open_client(url, key) as client:
            found = client.alerts(scope=scope, kind=kind, since=moment, limit=limit)
    except LedgerClientError as exc:
        raise api_failure(exc) from exc
    if as_json:
        print_json([alert.model_dump(mode="json") for alert in found])
        return
    table = Table(title=f"{len(found)} alerts, newest first", caption="amounts in USD, times in UTC")
    for column in ("occurred at", "scope", "limit", "kind", "spent", "max", "message"):
        table.add_column(column, justify="right" if column in ("spent", "max") else "left", overflow="fold")
    for alert in found:
        table.add_row(
            time_text(alert.occurred_at),
            alert.scope_key + (f" ({alert.alias})" if alert.alias else ""),
            alert.limit_name,
            f"[{KIND_STYLES.get(alert.kind, 'default')}]{alert.kind}[/]",
            usd_text(alert.spend_nanos),
            usd_text(alert.max_budget_nanos),
            escape(alert.message),
        )
    console.print(table)
