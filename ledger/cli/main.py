"""The ``spend-ledger`` command line."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ledger.cli import admission as admission_commands
from ledger.cli import alerts as alert_commands
from ledger.cli import budgets as budget_commands
from ledger.cli import dev as dev_commands
from ledger.cli import limits as limit_commands
from ledger.cli import prices as price_commands
from ledger.cli import replay as replay_commands
from ledger.cli import restore as restore_commands
from ledger.cli import serve as serve_commands
from ledger.cli import spend as spend_commands
from ledger.cli import store as store_commands
from ledger.cli import usage as usage_commands
from ledger.cli.common import console, fail
from ledger.cli.server_only import server_command
from ledger.domain.errors import LedgerError
from ledger.domain.money import format_usd
from ledger.domain.schemas import WIRE_MODELS, json_schema

app = typer.Typer(
    name="spend-ledger",
    help="Event-sourced spend ledger for LLM usage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
prices_app = typer.Typer(
    help="Price books: show what a model costs, convert LiteLLM's price file, publish a book to the workers.",
    no_args_is_help=True,
)
app.add_typer(prices_app, name="prices")
app.command()(server_command("project")(store_commands.project))
app.add_typer(spend_commands.spend_app, name="spend")
app.command()(spend_commands.sql)
app.command()(server_command("replay")(replay_commands.replay))
app.command()(server_command("restore")(restore_commands.restore))
app.command()(server_command("api")(serve_commands.api))
app.command()(server_command("dev")(dev_commands.dev))
app.add_typer(budget_commands.budgets_app, name="budgets")
app.command()(usage_commands.check)
app.command()(usage_commands.publish)
app.add_typer(alert_commands.alerts_app, name="alerts")
app.command()(admission_commands.admit)
app.command()(admission_commands.release)
app.command()(admission_commands.admissions)
app.add_typer(limit_commands.limits_app, name="limits")
prices_app.command("import")(price_commands.prices_import)


@app.command()
def demo() -> None:
    """Price a morning of sample LLM calls, fold them into budgets, print the ledger."""
    from ledger.demo import run_demo
    from ledger.pricebooks.genai import genai_prices_book

    book = genai_prices_book()
    result = run_demo(book)
    console.print(f"[bold]spend-ledger demo[/bold]  price book {book.source} ({book.version[:19]})\n")

    entries = Table(title="Ledger entries (cost in USD, exact to the nano)")
    for column in ("event", "scopes", "model", "tokens in/out", "cost", "priced as"):
        entries.add_column(column, justify="right" if column == "cost" else "left")
    for entry in result.entries:
        estimated = " (estimated)" if entry.tokens_estimated else ""
        entries.add_row(
            entry.event_id,
            " ".join(k for k in entry.scope_keys if not k.startswith(("global", "tag"))),
            entry.model,
            f"{entry.usage.prompt_tokens}/{entry.usage.completion_tokens}{estimated}",
            format_usd(entry.cost_nanos),
            entry.priced_as or entry.cost_source,
        )
    console.print(entries)

    budgets = Table(title="Budgets after the fold")
    for column in ("scope", "limit", "window (UTC)", "spent", "max", "remaining", "status"):
        budgets.add_column(column)
    for key in sorted(result.states):
        state = result.states[key]
        if not state.limits:
            budgets.add_row(key, "-", "-", format_usd(state.total_spend_nanos), "-", "-", "no budget")
        for limit in state.limits:
            end = limit.window_end.strftime("%m-%d %H:%M") if limit.window_end else "never"
            max_text = format_usd(limit.spec.max_budget_nanos) if limit.spec.max_budget_nanos is not None else "-"
            remaining = limit.remaining_nanos
            budgets.add_row(
                key,
                limit.spec.limit_name,
                f"{limit.window_start:%m-%d %H:%M} .. {end}",
                format_usd(limit.spend_nanos),
                max_text,
                "-" if remaining is None else format_usd(remaining),
                "[red]EXCEEDED[/red]" if limit.exceeded else "[green]ok[/green]",
            )
    console.print(budgets)

    if result.alerts:
        console.print("[bold]Alerts[/bold]")
        for alert in result.alerts:
            where = escape(f"{alert.scope_key} [{alert.limit_name}]")
            console.print(f"  {alert.occurred_at:%H:%M} {where} {alert.kind}: {escape(alert.message)}")
    for event, reason in result.dead_letters:
        console.print(f"[yellow]dead-letter[/yellow] {escape(event.event_id)}: {escape(reason)}")
    console.print("\n1 duplicate delivery dropped by event_id. Next: `make test`, or read README.md for the tour.")


@app.command()
@server_command("broker")
def broker(
    port: Annotated[int, typer.Option(help="loopback port to listen on (0: a free one)")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) on 127.0.0.1 until Ctrl-C."""
    from ledger.broker import BrokerError, EmbeddedBroker

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)  # so a SIGTERM stops the broker too
    embedded = EmbeddedBroker(port=port or None)
    code = 0
    try:  # one try around the whole lifetime: an interrupt at any point stops the broker
        embedded.start()
        console.print(
            f"embedded broker (pid {embedded.pid}) on {embedded.bootstrap_servers}; "
            f"export KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}; Ctrl-C stops it"
        )
        code = embedded.wait()
    except KeyboardInterrupt:
        code = 0
    except BrokerError as exc:
        raise fail(str(exc)) from exc
    finally:
        embedded.stop()
    if code != 0:
        raise fail(f"the broker exited with code {code}")


@app.command()
@server_command("worker")
def worker() -> None:
    """Run the stream worker (Faust) against KAFKA_BOOTSTRAP_SERVERS until Ctrl-C/SIGTERM."""
    from pydantic import ValidationError

    from ledger.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    from streams.worker import run_worker

    run_worker(settings)


@app.command()
def schema(
    name: Annotated[str | None, typer.Argument(help=f"one of: {', '.join(WIRE_MODELS)}")] = None,
    out: Annotated[Path | None, typer.Option(help="write every schema as NAME.schema.json into this folder")] = None,
) -> None:
    """Print the JSON Schema of a wire record, or write all of them to a folder."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for record in WIRE_MODELS:
            (out / f"{record}.schema.json").write_text(json.dumps(json_schema(record), indent=2) + "\n")
        console.print(f"wrote {len(WIRE_MODELS)} schemas to {out}")
        return
    if name is None:
        raise fail(f"name a record ({', '.join(WIRE_MODELS)}) or pass --out DIR")
    try:
        print(json.dumps(json_schema(name), indent=2))
    except KeyError as exc:
        raise fail(str(exc.args[0])) from exc


@prices_app.command("show")
def prices_show(
    model: str,
    provider: Annotated[str | None, typer.Option(help="provider id, e.g. openai, anthropic, azure")] = None,
    at: Annotated[
        datetime | None,
        typer.Option(help="price at this time (default: now, UTC)", formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]),
    ] = None,
    book_file: Annotated[Path | None, typer.Option("--book", help="a price book JSON file (default: bundled)")] = None,
) -> None:
    """Show the rates a model is charged at."""
    from ledger.domain.prices import load_price_book
    from ledger.domain.pricing import price_at
    from ledger.pricebooks.genai import genai_prices_book

    moment = (at or datetime.now(UTC)).astimezone(UTC) if (at is None or at.tzinfo) else at.replace(tzinfo=UTC)
    try:
        book = load_price_book(book_file.read_bytes()) if book_file else genai_prices_book()
        rates = price_at(book, model, provider, moment)
    except (LedgerError, OSError) as exc:
        raise fail(str(exc)) from exc
    table = Table(title=f"{model} at {moment:%Y-%m-%d %H:%M} UTC ({book.version[:19]})")
    table.add_column("token kind")
    table.add_column("USD per million tokens", justify="right")
    for field_name, value in rates.model_dump(exclude_none=True).items():
        table.add_row(field_name, str(value))
    console.print(table)


@prices_app.command("import-litellm")
def prices_import_litellm(
    source: Annotated[Path, typer.Argument(help="LiteLLM's model_prices_and_context_window.json")],
    out: Annotated[Path, typer.Option(help="where to write the price book JSON")],
    strict: Annotated[
        bool, typer.Option(help="refuse the file if any price is finer than 12 decimal places per token")
    ] = False,
) -> None:
    """Import a LiteLLM price file into a price book; every skipped entry is reported."""
    from ledger.pricebooks.litellm import import_litellm_prices

    try:
        book, report = import_litellm_prices(
            source.read_bytes(), source=f"litellm {source.name}", skip_imprecise=not strict
        )
    except (LedgerError, OSError) as exc:
        raise fail(str(exc)) from exc
    out.write_text(book.model_dump_json(exclude_none=True))
    console.print(f"{report.summary()}\nwrote {out} ({book.version[:19]})")
    for reason, keys in sorted(report.skipped.items()):
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        console.print(f"  skipped ({escape(reason)}): {escape(shown)}")


if __name__ == "__main__":
    app()
