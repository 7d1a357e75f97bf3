"""``spend-ledger spend ...`` and ``spend-ledger sql``: read the store, print a table, JSON or CSV.

Machine output (``--json``, ``--csv``) keeps every amount as integer nanos (``*_nanos``)
with its exact USD text beside it (``*_usd``); the table shows USD only.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.cli.common import console, fail, parse_moment
from ledger.cli.server_only import server_command
from ledger.domain.money import format_usd
from ledger.settings import Settings, load_settings
from ledger.store.queries import (
    DEFAULT_TIME_ZONE,
    GROUP_BY_NAMES,
    SPEND_ROWS_MAX,
    SPENDER_KINDS,
    WINDOWS,
    InvalidSpendQuery,
    SpendFilters,
    budget_statuses,
    dead_letter_summary,
    spend_by,
    time_zone_named,
    top_spenders,
)

if TYPE_CHECKING:
    import duckdb

Result = TypeVar("Result")

spend_app = typer.Typer(
    help="Spend from the store, also while the api runs: by group, top spenders, budgets, dead letters.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON: a list of objects, amounts in nanos and USD")]
CsvFlag = Annotated[bool, typer.Option("--csv", help="print CSV with a header row, amounts in nanos and USD")]
FromOption = Annotated[
    str | None, typer.Option("--from", help="ISO 8601 time, inclusive (no zone: UTC), e.g. 2025-11-03T09:00Z")
]
ToOption = Annotated[str | None, typer.Option("--to", help="ISO 8601 time, exclusive (no zone: UTC)")]
SPEND_COLUMNS = ("spend_nanos", "entry_count", "prompt_tokens", "completion_tokens")
SPEND_BY_COLUMNS = (*SPEND_COLUMNS, "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _filter_option(dimension: str, example: str) -> Any:
    return typer.Option(
        f"--{dimension.replace('_', '-')}", help=f"only this {dimension}, repeatable (any of), e.g. {example}"
    )


@spend_app.command("by")
@server_command("spend by")
def spend_by_command(
    group_by: Annotated[
        list[str] | None, typer.Option("--group-by", "-g", help=f"repeatable; one of: {', '.join(GROUP_BY_NAMES)}")
    ] = None,
    window: Annotated[
        str | None, typer.Option(help=f"a row per window: {', '.join(WINDOWS)} (weeks start on Monday)")
    ] = None,
    tz: Annotated[
        str, typer.Option("--tz", help="IANA time zone of windows, time groups and zone-less --from/--to")
    ] = DEFAULT_TIME_ZONE,
    start: Annotated[
        str | None, typer.Option("--from", help="ISO 8601 time, inclusive (no zone: --tz), e.g. 2025-11-03T09:00Z")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO 8601 time, exclusive (no zone: --tz)")] = None,
    scope: Annotated[str | None, typer.Option(help="only entries charged to this scope key, e.g. team:ml")] = None,
    team: Annotated[list[str] | None, _filter_option("team", "ml")] = None,
    user: Annotated[list[str] | None, _filter_option("user", "alice")] = None,
    key: Annotated[list[str] | None, _filter_option("key", "sk-1")] = None,
    end_user: Annotated[list[str] | None, _filter_option("end_user", "cust-7")] = None,
    tag: Annotated[list[str] | None, _filter_option("tag", "prod")] = None,
    model: Annotated[list[str] | None, _filter_option("model", "gpt-4o")] = None,
    limit: Annotated[int, typer.Option(help=f"at most this many rows (1..{SPEND_ROWS_MAX})")] = SPEND_ROWS_MAX,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Spend grouped by scope kinds, model and time buckets, per window (no --group-by and no
    --window: the total), with tokens beside cost; windows start at local boundaries in --tz."""
    try:
        zone = time_zone_named(tz)
    except InvalidSpendQuery as exc:
        raise fail(str(exc)) from exc
    names = group_by or []
    since, until = _moment_in(start, "--from", zone), _moment_in(end, "--to", zone)
    filters = SpendFilters.given(team=team, user=user, key=key, end_user=end_user, tag=tag, model=model)
    report = _query(
        lambda connection: spend_by(
            connection,
            names,
            start=since,
            end=until,
            scope_key=scope,
            filters=filters,
            window=window,
            time_zone=tz,
            limit=limit,
        )
    )
    windowed = ["window_start", "window_end"] if window is not None else []
    rows = [
        [
            *([row.window_start, row.window_end] if window is not None else []),
            *row.groups.values(),
            *(getattr(row, column) for column in SPEND_BY_COLUMNS),
        ]
        for row in report.rows
    ]
    heading = ", ".join([*([f"{window} in {tz}"] if window is not None else []), *report.group_by]) or "total"
    title = f"Spend by {heading}{_range_text(since, until)}"
    _emit(title, [*windowed, *report.group_by, *SPEND_BY_COLUMNS], rows, as_json=as_json, as_csv=as_csv)
    if report.truncated:
        _note(f"only the first {limit} rows are shown; narrow the range or raise --limit")


def _moment_in(text: str | None, option: str, zone: ZoneInfo) -> datetime | None:
    """``parse_moment``, but a time given without a zone is read in ``zone`` (``--tz``)."""
    moment = parse_moment(text, option)
    if text is None or moment is None or datetime.fromisoformat(text).tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone)


@spend_app.command("top")
@server_command("spend top")
def spend_top_command(
    kind: Annotated[str, typer.Option(help=f"one of: {', '.join(SPENDER_KINDS)}")],
    limit: Annotated[int, typer.Option(help="how many spenders")] = 10,
    start: FromOption = None,
    end: ToOption = None,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """The scopes of one kind that spent most, most first."""
    since, until = parse_moment(start, "--from"), parse_moment(end, "--to")
    spenders = _query(lambda connection: top_spenders(connection, kind, start=since, end=until, limit=limit))
    rows = [
        [spender.scope_key, spender.spend_nanos, spender.entry_count, spender.prompt_tokens, spender.completion_tokens]
        for spender in spenders
    ]
    title = f"Top {limit} {kind} spenders{_range_text(since, until)}"
    _emit(title, ["scope_key", *SPEND_COLUMNS], rows, as_json=as_json, as_csv=as_csv)


@spend_app.command("budgets")
@server_command("spend budgets")
def spend_budgets_command(
    scope: Annotated[str | None, typer.Option(help="only this scope key, e.g. team:ml")] = None,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Each budgeted scope's limits (a row per limit), total spend, and spend since its last upsert or reset.

    Not the spend of each limit's current window: the replay computes that.
    """
    report = _query(lambda connection: budget_statuses(connection, scope))
    limits = [(status, spec) for status in report.statuses for spec in status.limits]
    if as_json or as_csv:
        columns = [
            "scope_key",
            "alias",
            "limit_name",
            "max_budget_nanos",
            "soft_budget_nanos",
            "duration",
            "model",
            "total_spend_nanos",
            "last_command_action",
            "last_command_at",
            "spend_since_last_command_nanos",
        ]
        rows = [
            [
                status.scope_key,
                status.alias,
                spec.limit_name,
                spec.max_budget_nanos,
                spec.soft_budget_nanos,
                spec.duration,
                spec.model,
                status.total_spend_nanos,
                status.last_command_action,
                status.last_command_at,
                status.spend_since_last_command_nanos,
            ]
            for status, spec in limits
        ]
    else:  # fewer, denser columns to fit a terminal
        columns = ["scope", "limit", "max_nanos", "soft_nanos", "total_spend_nanos", "since", "spend_since_nanos"]
        rows = [
            [
                status.scope_key + (f" ({status.alias})" if status.alias else ""),
                spec.limit_name,
                spec.max_budget_nanos,
                spec.soft_budget_nanos,
                status.total_spend_nanos,
                f"{status.last_command_action} {status.last_command_at.isoformat(sep=' ')}",
                status.spend_since_last_command_nanos,
            ]
            for status, spec in limits
        ]
    _emit("Budgets (spend since: the last upsert or reset)", columns, rows, as_json=as_json, as_csv=as_csv)
    if report.truncated:
        _note(f"only the first {len(report.statuses)} scopes are shown; pass --scope")


@spend_app.command("dead-letters")
@server_command("spend dead-letters")
def spend_dead_letters_command(as_json: JsonFlag = False, as_csv: CsvFlag = False) -> None:
    """What the worker refused, counted by source topic, stage and reason, with an example."""
    groups = _query(dead_letter_summary)
    columns = ["source_topic", "stage", "reason", "count", "example_event_id", "example_detail"]
    rows = [
        [group.source_topic, group.stage, group.reason, group.count, group.example_event_id, group.example_detail]
        for group in groups
    ]
    _emit("Dead letters", columns, rows, as_json=as_json, as_csv=as_csv)


@server_command("sql")
def sql(
    statement: Annotated[str, typer.Argument(help='one SQL statement, e.g. "SELECT model, sum(cost_nanos) ..."')],
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 10_000,
    timeout_s: Annotated[float, typer.Option(help="stop the statement after this many seconds")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: a list of objects")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV with a header row")] = False,
) -> None:
    """Run one read-only SQL statement on the store (no writes, files, attaches or extensions)."""
    import duckdb

    from ledger.store.location import store_location
    from ledger.store.schema import StoreUnavailable
    from ledger.store.sql import SqlError, run_readonly_sql

    _check_one_format(as_json, as_csv)
    try:
        with store_location(_settings()) as store:
            result = run_readonly_sql(store, statement, limit, timeout_s=timeout_s)
    except (SqlError, StoreUnavailable, ValueError, duckdb.Error) as exc:
        raise fail(str(exc)) from exc
    _emit("", _unique(result.columns), result.rows, as_json=as_json, as_csv=as_csv, money=False)
    if result.truncated:
        _note(f"only the first {result.row_limit} rows are shown; add a LIMIT or raise --limit")


def _query(run: Callable[[duckdb.DuckDBPyConnection], Result]) -> Result:
    """Open the store read-only and run one query function; every expected failure becomes ``fail``."""
    import duckdb

    from ledger.store.schema import StoreUnavailable, opened_store

    with ExitStack() as store:
        try:
            connection = store.enter_context(opened_store(_settings(), read_only=True))
        except (StoreUnavailable, duckdb.Error) as exc:
            raise fail(str(exc)) from exc
        try:
            return run(connection)
        except InvalidSpendQuery as exc:
            raise fail(str(exc)) from exc
        except duckdb.Error as exc:
            raise fail(f"could not read the store: {exc}") from exc


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc


def _range_text(start: datetime | None, end: datetime | None) -> str:
    if start is None and end is None:
        return ""
    return f" [{start.isoformat() if start else '...'}, {end.isoformat() if end else '...'})"


def _check_one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise fail("choose one of --json and --csv")


def _emit(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    as_json: bool,
    as_csv: bool,
    money: bool = True,
) -> None:
    """Print ``rows``: a Rich table (amounts in USD), or JSON/CSV in which each ``*_nanos``
    column is followed by its exact ``*_usd`` text. ``money`` False prints values as they are."""
    _check_one_format(as_json, as_csv)
    amounts = [money and column.endswith("_nanos") for column in columns]
    if not (as_json or as_csv):
        cells = [[_cell(value, amount) for value, amount in zip(row, amounts, strict=True)] for row in rows]
        table = Table(title=title or None)
        for index, (column, amount) in enumerate(zip(columns, amounts, strict=True)):
            heading = (column.removesuffix("_nanos") + " (USD)" if amount else column).replace("_", " ")
            # An amount keeps its digits on one line; anything too wide folds, never elided.
            widest = max((len(row[index]) for row in cells), default=0) if amount else None
            table.add_column(heading, justify="right" if amount else "left", min_width=widest, overflow="fold")
        for row_cells in cells:
            table.add_row(*row_cells)
        console.print(table)
        return
    names: list[str] = []
    for column, amount in zip(columns, amounts, strict=True):
        names.extend([column, column.removesuffix("_nanos") + "_usd"] if amount else [column])
    machine_rows = []
    for row in rows:
        machine_row: list[Any] = []
        for value, amount in zip(row, amounts, strict=True):
            machine_row.extend([value, None if value is None else format_usd(value)] if amount else [value])
        machine_rows.append(machine_row)
    if as_json:
        objects = [{name: _jsonable(value) for name, value in zip(names, row, strict=True)} for row in machine_rows]
        typer.echo(json.dumps(objects, indent=2))
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(names)
    for row in machine_rows:
        writer.writerow("" if value is None else _text(value) for value in row)


def _cell(value: Any, amount: bool) -> Text:
    if value is None:
        return Text("-", style="dim")
    if amount:
        return Text(format_usd(value))
    if isinstance(value, datetime):
        return Text(value.isoformat(sep=" "))  # the space lets a narrow column wrap there
    return Text(_text(value))


def _text(value: Any) -> str:
    """Text of one value; times in ISO 8601."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _jsonable(value: Any) -> Any:
    """A value JSON carries exactly: ints stay ints (of any size), Decimals become text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    return _text(value)


def _unique(columns: Sequence[str]) -> list[str]:
    """Column names made unique (``a``, ``a_2``), so no JSON key hides another."""
    names: list[str] = []
    for column in columns:
        name, count = column, 1
        while name in names:
            count += 1
            name = f"{column}_{count}"
        names.append(name)
    return names


def _note(message: str) -> None:
    Console(stderr=True).print(f"[yellow]note:[/yellow] {message}")
