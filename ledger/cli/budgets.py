"""``spend-ledger budgets ...``: set, get, list, reset and delete budgets on the running api.

A write answers once the worker has applied it; if the worker does not confirm in time
the api answers 202 and the scope is shown as it will be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ledger.cli.common import console, fail
from ledger.cli.remote import JsonFlag, KeyOption, UrlOption, api_failure, open_client, print_json, time_text, usd_text
from ledger.domain.scopes import SCOPE_KINDS, InvalidScope, scope_key

if TYPE_CHECKING:
    from ledger.client import BudgetInfo, BudgetWrite, LedgerClient, LimitInfo, ModelLimit

Answer = TypeVar("Answer")
SCOPE_COLUMN_WIDTH_MAX = 48

budgets_app = typer.Typer(
    help="Budgets on the running api (SPEND_LEDGER_API_URL): set, get, list, reset, delete.", no_args_is_help=True
)

KindArgument = Annotated[
    str, typer.Argument(metavar="KIND", help=f"scope kind: {', '.join(SCOPE_KINDS)}", show_default=False)
]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="scope id ('*' for global)", show_default=False)]


@budgets_app.command("set")
def budgets_set(
    kind: KindArgument,
    scope_id: IdArgument,
    max_budget: Annotated[
        str | None, typer.Option("--max-budget", help="USD per window; over budget when spend > this")
    ] = None,
    soft_budget: Annotated[str | None, typer.Option("--soft-budget", help="USD per window that alerts only")] = None,
    duration: Annotated[
        str | None,
        typer.Option(help="window: 30s, 1m, 1h, 1d, 7d, 30d, daily, weekly, monthly, yearly (default: never resets)"),
    ] = None,
    model_budget: Annotated[
        list[str] | None,
        typer.Option(
            "--model-budget", help="a per-model limit MODEL=USD or MODEL=USD/DURATION (repeatable)", show_default=False
        ),
    ] = None,
    alias: Annotated[str | None, typer.Option(help="a display name for the scope")] = None,
    timezone: Annotated[str | None, typer.Option(help="time zone of calendar windows (default: UTC)")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a scope's budgets: its whole list of limits (the overall one and one per model)."""
    from ledger.client import usd_text as exact_usd

    _checked_scope(kind, scope_id)
    try:
        amounts = {
            name: None if value is None else exact_usd(value, name)
            for name, value in (("--max-budget", max_budget), ("--soft-budget", soft_budget))
        }
        models = _model_limits(model_budget or [])
    except ValueError as exc:
        raise fail(escape(str(exc))) from exc
    written = _call(
        url,
        key,
        lambda client: client.set_budget(
            kind,
            scope_id,
            max_budget=amounts["--max-budget"],
            soft_budget=amounts["--soft-budget"],
            budget_duration=duration,
            model_max_budget=models,
            alias=alias,
            timezone=timezone,
        ),
    )
    _show_written(written, "set the budgets of", as_json)


@budgets_app.command("get")
def budgets_get(
    kind: KindArgument, scope_id: IdArgument, url: UrlOption = None, key: KeyOption = None, as_json: JsonFlag = False
) -> None:
    """One scope's limits, spend in their current windows, and when they reset."""
    _checked_scope(kind, scope_id)
    budget = _call(url, key, lambda client: client.get_budget(kind, scope_id))
    if as_json:
        print_json(budget.model_dump(mode="json"))
        return
    console.print(budget_table([budget], f"Budget of {budget.scope_key}"))


@budgets_app.command("list")
def budgets_list(
    kind: Annotated[str | None, typer.Option(help=f"only scopes of this kind: {', '.join(SCOPE_KINDS)}")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Every scope with a budget, by scope key."""
    if kind is not None and kind not in SCOPE_KINDS:
        raise fail(f"unknown scope kind {kind!r}; expected one of {', '.join(SCOPE_KINDS)}")
    budgets = _call(url, key, lambda client: client.list_budgets(kind))
    if as_json:
        print_json([budget.model_dump(mode="json") for budget in budgets])
        return
    if not budgets:
        console.print("no budgets" + (f" of kind {kind}" if kind else ""))
        return
    console.print(budget_table(budgets, f"{len(budgets)} budgeted scopes" + (f" of kind {kind}" if kind else "")))


@budgets_app.command("reset")
def budgets_reset(
    kind: KindArgument,
    scope_id: IdArgument,
    limit: Annotated[
        str | None, typer.Option("--limit", help="only this limit (a name from `budgets get`)", show_default=False)
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Open a new window now, for every limit of the scope or only --limit."""
    _checked_scope(kind, scope_id)
    written = _call(url, key, lambda client: client.reset_budget(kind, scope_id, limit))
    _show_written(written, "reset" + (f" limit {limit} of" if limit else ""), as_json)


@budgets_app.command("delete")
def budgets_delete(
    kind: KindArgument, scope_id: IdArgument, url: UrlOption = None, key: KeyOption = None, as_json: JsonFlag = False
) -> None:
    """Remove every limit of the scope (its spend history stays)."""
    _checked_scope(kind, scope_id)
    written = _call(url, key, lambda client: client.delete_budget(kind, scope_id))
    if as_json:
        print_json(written.model_dump(mode="json"))
        return
    console.print(f"deleted the budgets of {escape(written.scope_key)} (its spend history stays)")
    if not written.applied:
        _not_confirmed()


def budget_table(budgets: Sequence[BudgetInfo], title: str) -> Table:
    """A row per limit: scope, limit, window, spent, max, remaining, resets at, status."""
    table = Table(title=title, caption="amounts in USD, times in UTC")
    scopes = [budget.scope_key + (f" ({budget.alias})" if budget.alias else "") for budget in budgets]
    for column in ("scope", "limit", "window", "spent", "max", "remaining", "resets at", "status"):
        amount = column in ("spent", "max", "remaining")
        # Only a scope folds (ids run to 256 characters); every other cell keeps its line.
        scope_width = min(max(map(len, scopes), default=5), SCOPE_COLUMN_WIDTH_MAX) if column == "scope" else None
        table.add_column(
            column,
            justify="right" if amount else "left",
            overflow="fold",
            no_wrap=column != "scope",
            min_width=scope_width,
        )
    for budget, scope in zip(budgets, scopes, strict=True):
        if not budget.limits:
            table.add_row(
                scope, "-", "-", usd_text(budget.total_spend_nanos), "-", "-", "-", Text("no budget"), end_section=True
            )
        for index, limit in enumerate(budget.limits):
            last = index == len(budget.limits) - 1
            table.add_row(
                scope if index == 0 else "",
                limit.name,
                limit.budget_duration or "no reset",
                usd_text(limit.spend_nanos),
                usd_text(limit.max_budget_nanos),
                usd_text(limit.remaining_budget_nanos),
                time_text(limit.budget_reset_at),
                limit_status(limit),
                end_section=last and len(budgets) > 1,
            )
    return table


def limit_status(limit: LimitInfo) -> Text:
    if limit.exceeded:
        return Text("EXCEEDED", style="bold red")
    if limit.soft_reached:
        return Text("soft budget reached", style="yellow")
    return Text("ok", style="green")


def _checked_scope(kind: str, scope_id: str) -> None:
    try:
        scope_key(kind, scope_id)
    except InvalidScope as exc:
        raise fail(escape(str(exc))) from exc


def _model_limits(texts: list[str]) -> dict[str, str | ModelLimit]:
    """``MODEL=USD`` or ``MODEL=USD/DURATION`` options, by model."""
    from ledger.client import ModelLimit
    from ledger.client import usd_text as exact_usd

    limits: dict[str, str | ModelLimit] = {}
    for text in texts:
        model, sep, limit = text.rpartition("=")
        if not sep or not model or not limit:
            raise ValueError(f"--model-budget {text!r}: expected MODEL=USD or MODEL=USD/DURATION, e.g. gpt-4o=1.5/1d")
        if model in limits:
            raise ValueError(f"--model-budget names {model!r} twice")
        amount, _, duration = limit.partition("/")
        name = f"--model-budget {model}"
        limits[model] = ModelLimit(exact_usd(amount, name), duration) if duration else exact_usd(amount, name)
    return limits


def _call(url: str | None, key: str | None, request: Callable[[LedgerClient], Answer]) -> Answer:
    from ledger.client import LedgerClientError

    try:
        with open_client(url, key) as client:
            return request(client)
    except LedgerClientError as exc:
        raise api_failure(exc) from exc


def _show_written(written: BudgetWrite, done: str, as_json: bool) -> None:
    if as_json:
        print_json(written.model_dump(mode="json"))
        return
    console.print(f"{done} {escape(written.scope_key)}")
    console.print(budget_table([written], f"Budget of {written.scope_key}"))
    if not written.applied:
        _not_confirmed()


def _not_confirmed() -> None:
    console.print(
        "[yellow]note:[/yellow] the worker has not confirmed it yet (is `spend-ledger worker` running?);"
        " it applies once the worker reads it"
    )
