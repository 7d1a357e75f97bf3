"""``spend-ledger dev``: broker, worker and api on localhost in one command (``make run``).

With ``--demo`` it then sets the sample budgets of ``spend-ledger demo`` through the api,
sends the sample calls with ``occurred_at`` now, and prints what the ledger made of them,
with three ``curl`` lines to try.
"""

from __future__ import annotations

import json
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger.cli.common import fail

if TYPE_CHECKING:  # imported when the command runs, so other commands start fast
    import httpx

    from ledger.devstack import DevStack, DevStackConfig
    from ledger.settings import Settings

DEMO_REQUEST_TIMEOUT_S = 30.0
DEMO_SETTLE_TIMEOUT_S = 60.0
DEMO_POLL_INTERVAL_S = 0.25
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A scope the demo drives over budget: the printed ``curl`` check of it answers 402.
EXCEEDED_CHECK = {"team": "research"}


def dev(
    demo: Annotated[
        bool, typer.Option("--demo", help="set sample budgets and send sample usage once the stack is ready")
    ] = False,
    api_port: Annotated[
        int | None, typer.Option(help="loopback port of the HTTP api (default SPEND_LEDGER_API_PORT, 8080; 0: free)")
    ] = None,
    broker_port: Annotated[int, typer.Option(help="loopback port of the embedded broker (0: a free one)")] = 9092,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="folder of the store and the worker state (default SPEND_LEDGER_DATA_DIR, ./data)"),
    ] = None,
) -> None:
    """Run the embedded broker, the catalog, a worker and the api on 127.0.0.1 until Ctrl-C; data under ./data."""
    from pydantic import ValidationError

    from ledger.broker import BrokerError, free_port
    from ledger.devstack import HOST, DevStack, DevStackConfig, DevStackError, check_ports, generate_master_key
    from ledger.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    store_dir = data_dir if data_dir is not None else settings.data_dir
    store_path = store_dir / settings.store_path.name if data_dir is not None else settings.store_path
    master_key = settings.master_key.get_secret_value() if settings.master_key else generate_master_key()
    config = DevStackConfig(
        api_port=free_port(HOST) if api_port == 0 else (settings.api_port if api_port is None else api_port),
        broker_port=free_port(HOST) if broker_port == 0 else broker_port,
        data_dir=store_dir.absolute(),
        store_path=store_path.absolute(),
        master_key=master_key,
        embedded_catalog=settings.store_catalog is None,
    )
    try:
        check_ports(config)
    except DevStackError as exc:
        raise _fail(str(exc)) from exc

    stack = DevStack(config)
    restored = False

    def restore_if_log_lost() -> Callable[[], None] | None:
        nonlocal restored
        wait = _restore_if_log_lost(stack, _stack_settings(settings, config))
        restored = wait is not None
        return wait

    stack.before_worker = restore_if_log_lost
    if settings.master_key is None:
        stack.say("generated a master key for this run (SPEND_LEDGER_MASTER_KEY sets one)")
    failure: str | None = None
    with _signals_request_stop(stack):
        try:
            if stack.start():
                outcome: DemoOutcome | None = None
                if demo and restored:
                    stack.say("demo: not sent again, the store has the ledger's history; this is what it holds")
                    outcome = _read_ledger(stack)
                elif demo:
                    outcome = _run_demo(stack)
                if not stack.stop_requested.is_set():
                    print(summary(config, outcome), flush=True)
                    stack.watch()
        except (DevStackError, BrokerError) as exc:
            failure = str(exc)
        finally:
            clean = stack.stop()
    if failure is not None:
        raise _fail(f"{failure}\nthe dev stack stopped")
    stack.say("stopped" if clean else "stopped; a process had to be killed")
    if not clean:
        raise typer.Exit(code=1)


def _stack_settings(settings: Settings, config: DevStackConfig) -> Settings:
    """The settings the children run with (``child_environment``), for the dev process's own work."""
    copied: Settings = settings.model_copy(
        update={
            "kafka_bootstrap_servers": config.bootstrap_servers,
            "data_dir": config.data_dir,
            "store_path": config.store_path,
        }
    )
    return copied


def _restore_if_log_lost(stack: DevStack, settings: Settings) -> Callable[[], None] | None:
    """Before the worker starts: if the store has history and the (new, in-memory) broker
    holds nothing, restore live state from the store (DESIGN section 7). Returns the wait
    for the worker to apply it, run once the api is ready; None when there is nothing to do."""
    import duckdb
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from ledger.cli.restore import live_records, plan_and_publish, progress_bar, wait_for_worker
    from ledger.devstack import DevStackError
    from ledger.restore.plan import store_has_history
    from ledger.restore.run import RestoreOutcome
    from ledger.store.location import data_path_of
    from ledger.store.schema import NothingStored, StoreUnavailable, opened_store

    started = time.monotonic()
    store = ExitStack()
    try:
        connection = store.enter_context(opened_store(settings, read_only=True))
    except NothingStored:  # a new store: nothing to restore
        return None
    except StoreUnavailable as exc:
        raise DevStackError(str(exc)) from exc
    progress = progress_bar(Console())
    try:
        if not store_has_history(connection):
            return None
        held = live_records(settings)
        if held:
            stack.say(f"the broker already holds {held:,} records: live state is not restored from the store")
            return None
        stack.say(f"the broker is empty and the store at {data_path_of(settings)} is not: restoring live state from it")
        with progress:
            outcome = plan_and_publish(settings, connection, progress)
    except (duckdb.Error, KafkaError, OSError) as exc:
        raise DevStackError(f"restore: {type(exc).__name__}: {exc}") from exc
    finally:
        store.close()

    def wait_for_it() -> None:
        try:
            with progress:
                wait_for_worker(settings, outcome.plan, progress)
        except (KafkaError, TimeoutError) as exc:
            raise DevStackError(f"restore: {type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - started
        stack.say(RestoreOutcome(outcome.plan, outcome.records, seconds).summary())

    return wait_for_it


def _fail(message: str) -> typer.Exit:
    """Like ``fail``, but as plain text: log lines quoted in ``message`` keep their width."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code=2)


@contextmanager
def _signals_request_stop(stack: DevStack) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ask the stack to stop (the children, in their own
    sessions, see none of them); the previous handlers come back afterwards."""

    def request_stop(signum: int, frame: object) -> None:
        stack.request_stop(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- the demo ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo left in the ledger, as the api answers it."""

    run_start: str | None  # None: everything since the store began (a restored stack)
    spend_rows: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    budgets: list[dict[str, Any]]


def _run_demo(stack: DevStack) -> DemoOutcome | None:
    """Set the sample budgets, send the sample calls (occurred now), and wait until the
    worker has charged them and the store shows their spend and alerts; None if a stop
    was requested meanwhile."""
    import httpx

    from ledger.devstack import DevStackError

    try:
        return _seed_demo(stack)
    except httpx.HTTPError as exc:
        stack.check_children()  # a process that exited explains the failure best
        raise DevStackError(f"demo: {type(exc).__name__}: {exc}") from exc


def _seed_demo(stack: DevStack) -> DemoOutcome | None:
    from datetime import UTC, datetime, timedelta

    import httpx

    from ledger.demo import UNPRICED_DEMO_MODEL, demo_budget_requests, demo_events

    config = stack.config
    headers = {"Authorization": f"Bearer {config.master_key}"}
    with httpx.Client(base_url=config.api_url, headers=headers, timeout=DEMO_REQUEST_TIMEOUT_S) as client:
        for kind, scope_id, body in demo_budget_requests():
            answer = _expect(client.put(f"/v1/budgets/{kind}/{scope_id}", json=body), 200, 202)
            applied = "applied" if answer.status_code == 200 else "accepted; the worker applies it soon"
            stack.say(f"demo: budget {kind}:{scope_id} {_budget_text(body)} ({applied})")
        # A budget's window opens when the worker applies it: send the calls after that.
        if not _wait_until(stack, lambda: _budgets_in_force(client), "the worker to apply the demo budgets"):
            return None
        run_start = datetime.now(UTC)
        events = demo_events(run_start, step=timedelta(0), id_prefix=f"demo-{secrets.token_hex(4)}-")
        wire = [event.model_dump(mode="json", exclude_defaults=True) for event in events]
        accepted = _expect(client.post("/v1/usage", json={"events": wire}), 202).json()["accepted"]
        stack.say(
            f"demo: sent {accepted} usage events: one is a duplicate delivery (charged once), "
            f"one names {UNPRICED_DEMO_MODEL!r}, which no price book knows (a dead letter)"
        )
        since = {"from": run_start.isoformat()}
        priced = len({event.event_id for event in events if event.model != UNPRICED_DEMO_MODEL})
        spend_rows: list[dict[str, Any]] = []

        def spend_stored() -> bool:
            params = {"group_by": "team,model", **since}
            spend_rows[:] = _expect(client.get("/v1/spend", params=params), 200).json()["rows"]
            return sum(int(row["entry_count"]) for row in spend_rows) >= priced

        if not _wait_until(stack, spend_stored, "the store to show the demo's spend"):
            return None
        alerts: list[dict[str, Any]] = []

        def alerts_stored() -> bool:
            # Every scope live state holds over budget has its exceeded alert in the store.
            over = _over_budget(client)
            alerts[:] = _expect(client.get("/v1/alerts", params={"since": run_start.isoformat()}), 200).json()["alerts"]
            alerted = {alert["scope_key"] for alert in alerts if alert["kind"] == "exceeded"}
            return bool(over) and over <= alerted

        if not _wait_until(stack, alerts_stored, "the demo's budget alerts"):
            return None
        budgets = _expect(client.get("/v1/budgets"), 200).json()
    return DemoOutcome(run_start.isoformat(), spend_rows, sorted(alerts, key=_alert_order), budgets)


def _read_ledger(stack: DevStack) -> DemoOutcome:
    """Spend by team and model, the alerts and the budgets, as the api answers them now."""
    import httpx

    from ledger.devstack import DevStackError

    headers = {"Authorization": f"Bearer {stack.config.master_key}"}
    try:
        with httpx.Client(base_url=stack.config.api_url, headers=headers, timeout=DEMO_REQUEST_TIMEOUT_S) as client:
            rows = _expect(client.get("/v1/spend", params={"group_by": "team,model"}), 200).json()["rows"]
            alerts = _expect(client.get("/v1/alerts"), 200).json()["alerts"]
            budgets = _expect(client.get("/v1/budgets"), 200).json()
    except httpx.HTTPError as exc:
        raise DevStackError(f"reading the ledger: {type(exc).__name__}: {exc}") from exc
    return DemoOutcome(None, rows, sorted(alerts, key=_alert_order), budgets)


def _demo_scopes_query() -> dict[str, str]:
    from ledger.demo import demo_budget_requests

    return {kind: scope_id for kind, scope_id, _ in demo_budget_requests()}


def _budgets_in_force(client: httpx.Client) -> bool:
    answer = _expect(client.get("/v1/check", params=_demo_scopes_query()), 200, 402).json()
    scopes = answer.get("scopes") or answer.get("error", {}).get("scopes") or []
    limited = {scope["scope_key"] for scope in scopes if scope["limits"]}
    return {f"{kind}:{scope_id}" for kind, scope_id in _demo_scopes_query().items()} <= limited


def _over_budget(client: httpx.Client) -> set[str]:
    """The demo's scopes that live state holds over budget."""
    answer = _expect(client.get("/v1/check", params=_demo_scopes_query()), 200, 402).json()
    if "error" not in answer:
        return set()
    return {scope["scope_key"] for scope in answer["error"]["scopes"] if scope["exceeded"]}


def _alert_order(alert: dict[str, Any]) -> tuple[str, str, int]:
    return (str(alert["scope_key"]), str(alert["occurred_at"]), int(alert["spend_nanos"]))


def _wait_until(stack: DevStack, condition: Callable[[], bool], what: str) -> bool:
    """Poll ``condition`` until it holds (True) or a stop is requested (False); raise
    ``DevStackError`` on timeout or if a child exits."""
    from ledger.devstack import DevStackError

    deadline = time.monotonic() + DEMO_SETTLE_TIMEOUT_S
    while not condition():
        if stack.stop_requested.wait(DEMO_POLL_INTERVAL_S):
            return False
        stack.check_children()
        if time.monotonic() > deadline:
            raise DevStackError(f"demo: waited {DEMO_SETTLE_TIMEOUT_S:g} s for {what}")
    return True


def _expect(answer: httpx.Response, *statuses: int) -> httpx.Response:
    from ledger.devstack import DevStackError

    if answer.status_code not in statuses:
        request = answer.request
        raise DevStackError(
            f"demo: {request.method} {request.url.path} answered {answer.status_code}: {answer.text[:500]}"
        )
    return answer


def _budget_text(body: dict[str, str]) -> str:
    text = f"${body['max_budget']} {_period(body.get('budget_duration'))}"
    if "soft_budget" in body:
        text += f", alert at ${body['soft_budget']}"
    return text


def _period(duration: str | None) -> str:
    """``daily`` as it is, ``1d`` as ``per 1d``, no duration as ``in total``."""
    if duration is None:
        return "in total"
    return duration if duration.endswith("ly") else f"per {duration}"


# -- the summary ------------------------------------------------------------------------


def try_commands(config: DevStackConfig) -> list[str]:
    """Three ``curl`` lines that work as printed: a check of the scope the demo drives over
    budget (402 after ``--demo``), one usage event, and spend by team and model."""
    auth = ["-H", f"Authorization: Bearer {config.master_key}"]
    query = "&".join(f"{name}={value}" for name, value in EXCEEDED_CHECK.items())
    event = {
        "event_id": f"curl-{secrets.token_hex(4)}",
        "model": "gpt-4o",
        "provider": "openai",
        "user_id": "alice",
        "team_id": "research",
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
    }
    post = ["-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(event, separators=(",", ":"))]
    lines = [
        ["curl", "-i", *auth, f"{config.api_url}/v1/check?{query}"],
        ["curl", "-i", *post, *auth, f"{config.api_url}/v1/usage"],
        ["curl", "-s", *auth, f"{config.api_url}/v1/spend?group_by=team,model"],
    ]
    return [shlex.join(line) for line in lines]


def embedded_catalog_dsn(store_path: Path) -> str:
    """The connection string of the store's embedded catalog (for a notebook)."""
    from ledger.store.catalog_server import SUPERUSER, socket_dir_for
    from ledger.store.location import EMBEDDED_DATABASE

    return f"dbname={EMBEDDED_DATABASE} user={SUPERUSER} host={socket_dir_for(store_path / 'catalog' / 'pgdata')}"


def sql_command(config: DevStackConfig) -> str:
    """A ``spend-ledger sql`` line that reads this stack's store as printed."""
    query = "SELECT model, sum(cost_nanos) AS spend_nanos FROM ledger_entries GROUP BY ALL ORDER BY 2 DESC"
    return shlex.join(["env", f"SPEND_LEDGER_STORE_PATH={config.store_path}", ".venv/bin/spend-ledger", "sql", query])


def summary(config: DevStackConfig, outcome: DemoOutcome | None) -> str:
    """What the dev stack prints once it is ready: where things are, the master key, what
    the demo left, and what to try."""
    from ledger.devstack import HOST

    lines = [
        "",
        f"spend-ledger dev is running on {HOST}; Ctrl-C stops the api, the worker, the broker and the catalog.",
        f"  api         {config.api_url}",
        f"  docs        {config.api_url}/docs",
        f"  metrics     {config.api_url}/metrics",
        f"  broker      {config.bootstrap_servers} (in memory: its topics go when it stops)",
        f"  store       {config.store_path} (a DuckLake: Parquet under data/, catalog in PostgreSQL)",
        *([f"  catalog     {embedded_catalog_dsn(config.store_path)}"] if config.embedded_catalog else []),
        f"  master key  {config.master_key}",
    ]
    if outcome is not None:
        lines += _demo_lines(outcome)
    lines += ["", "Try:", *(f"  {command}" for command in try_commands(config))]
    lines += ["", "Ask the store anything while it runs, from another terminal:", f"  {sql_command(config)}", ""]
    return "\n".join(lines)


def _demo_lines(outcome: DemoOutcome) -> list[str]:
    from ledger.domain.money import format_usd

    if outcome.run_start is None:
        lines = ["", "Spend by team and model, restored from the store (USD):"]
    else:
        lines = ["", f"Demo spend by team and model since {outcome.run_start} (USD):"]
    lines.append(f"  {'team':<12} {'model':<22} {'calls':>5} {'spend':>12}")
    for row in outcome.spend_rows:
        groups = row["groups"]
        lines.append(
            f"  {groups.get('team') or '-':<12} {groups.get('model') or '-':<22} "
            f"{row['entry_count']:>5} {format_usd(row['spend_nanos']):>12}"
        )
    lines += ["", "Budgets (USD):" if outcome.run_start is None else "Demo budgets (USD):"]
    for budget in outcome.budgets:
        maximum = budget["max_budget_nanos"]
        lines.append(
            f"  {budget['scope_key']:<16} spent {format_usd(budget['spend_nanos']):>10} of "
            f"{'-' if maximum is None else format_usd(maximum):>6} {_period(budget['budget_duration']):<8} "
            f"{'EXCEEDED' if budget['exceeded'] else 'ok'}"
        )
    lines += ["", "Alerts:" if outcome.run_start is None else "Demo alerts:"]
    for alert in outcome.alerts:
        lines.append(f"  {alert['scope_key']} [{alert['limit_name']}] {alert['kind']}: {alert['message']}")
    return lines
