"""Check benchmark: the latency of ``GET /v1/check`` under a fixed open-loop rate.

    python -m bench.check [--rate 500] [--seconds 20] [--teams 1000] [--users 10000] [--keys 10000]

Starts the embedded broker, one worker and the api (``spend-ledger api``) as children,
publishes budget commands straight to ``budget-commands`` (every team, a share of users
and keys, a per-model limit on some teams, a handful of teams and keys over budget) and
usage straight to ``usage``, and waits until the api's budget state holds all of it. Then
a load generator in this process (a lean asyncio HTTP/1.1 client over a bounded pool of
keep-alive connections) sends ``GET /v1/check?user=..&team=..&key=..&model=..`` on a fixed
schedule whatever the answers (open loop, so coordinated omission cannot hide latency):
each latency is taken from the request's scheduled send time. ``--over-share`` of the checks name an
over-budget team or key (402). The baseline, in the same run and with the same load, is
``GET /healthz`` of the same api: the framework's own floor. The api's CPU per request
(from /proc, net of what it burns idle) says how close to saturation a run was.

Progress goes to stderr; the last line of stdout is JSON. The broker, the worker, the api
and the load generator share this machine's cores: compare ratios across machines, not
milliseconds. ``target_met`` is the issue's target, p99 <= 5 ms at 500 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.live import publish
from bench.stack import HOST, bench_stack, log
from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.events import UsageEvent
from ledger.domain.pricing import price_event
from ledger.domain.scopes import GLOBAL_SCOPE
from ledger.pricebooks.genai import genai_prices_book
from ledger.publishing import usage_messages
from ledger.settings import Settings
from ledger.topics import topic_names

TARGET_P99_MS = 5.0
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "claude-sonnet-4-20250514")
PER_MODEL_LIMIT_MODEL = "gpt-4o"

# The state: budgets in USD nanos, shares of scopes that carry one.
TEAM_BUDGET_NANOS = 5 * 10**9  # $5 a day: the usage below never reaches it
TEAM_MODEL_BUDGET_NANOS = 2 * 10**9
TEAM_MODEL_BUDGET_SHARE = 0.1
USER_BUDGET_NANOS = 2 * 10**9
USER_BUDGET_SHARE = 0.1
KEY_BUDGET_NANOS = 10**9
KEY_BUDGET_SHARE = 0.2
GLOBAL_BUDGET_USD = 1_000_000
OVER_BUDGET_NANOS = 1  # one charged event puts the scope over
OVER_TEAM_SHARE = 0.05
OVER_KEY_SHARE = 0.01

# Bounds: every wait has one.
API_READY_TIMEOUT_S = 90.0
STATE_TIMEOUT_S = 300.0
REFUSED_TIMEOUT_S = 60.0  # once every charge is in, the over-budget scopes follow at once
POLL_INTERVAL_S = 0.25
REQUEST_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 32
TIMER_EARLY_S = 0.001
IN_FLIGHT_MAX = 2_000  # beyond this a scheduled request is counted as an error, not sent
DRAIN_TIMEOUT_S = REQUEST_TIMEOUT_S + 2.0
BATCH_EVENTS = 1_000
IDLE_SECONDS = 3.0  # the api's CPU use with no requests, measured before the load


@dataclass(frozen=True)
class Plan:
    """The scopes, their budget commands, the usage, and the scopes that end up over."""

    teams: list[str]
    users: list[str]
    keys: list[str]
    over_teams: list[str]
    over_keys: list[str]
    commands: list[BudgetCommand]
    events: list[dict[str, Any]]
    expected_scopes: int
    command_scopes: int
    expected_global_spend_nanos: int


@dataclass
class Phase:
    """One open-loop run: a latency per request (ms from its scheduled send), the
    answers by status (or exception name), and client and api CPU spent."""

    name: str
    rate_rps: float
    latencies_ms: list[float] = field(default_factory=list)
    send_lags_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    api_cpu_s: float = 0.0

    @property
    def answered(self) -> int:
        return self.statuses["200"] + self.statuses["402"]

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in ("200", "402"))


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of ``values``, rounded to 0.001 ms; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))  # ceil(n * share), at least the first
    return round(ordered[min(len(ordered), int(rank)) - 1], 3)


def scope_count(share: float, total: int) -> int:
    return min(total, max(1, round(share * total)))


def build_plan(args: argparse.Namespace, issued_at: datetime, seed: int = 11) -> Plan:
    """Budgets on every team and a share of users and keys, and usage charging them."""
    rng = random.Random(seed)
    teams = [f"team-{n}" for n in range(args.teams)]
    users = [f"user-{n}" for n in range(args.users)]
    keys = [f"key-{n}" for n in range(args.keys)]
    over_teams = rng.sample(teams, scope_count(OVER_TEAM_SHARE, len(teams)))
    over_keys = rng.sample(keys, scope_count(OVER_KEY_SHARE, len(keys)))
    over = {f"team:{t}" for t in over_teams} | {f"key:{k}" for k in over_keys}

    def upsert(scope: str, *specs: BudgetSpec) -> BudgetCommand:
        return BudgetCommand(
            command_id=f"bench-{uuid.uuid4().hex}", scope_key=scope, action="upsert", issued_at=issued_at, budgets=specs
        )

    commands = []
    for team in teams:
        scope = f"team:{team}"
        if scope in over:
            commands.append(upsert(scope, BudgetSpec(max_budget_nanos=OVER_BUDGET_NANOS, duration="1d")))
            continue
        specs = [
            BudgetSpec(max_budget_nanos=TEAM_BUDGET_NANOS, soft_budget_nanos=TEAM_BUDGET_NANOS // 2, duration="1d")
        ]
        if rng.random() < TEAM_MODEL_BUDGET_SHARE:
            specs.append(
                BudgetSpec(max_budget_nanos=TEAM_MODEL_BUDGET_NANOS, duration="1d", model=PER_MODEL_LIMIT_MODEL)
            )
        commands.append(upsert(scope, *specs))
    for user in rng.sample(users, int(USER_BUDGET_SHARE * len(users))):
        commands.append(upsert(f"user:{user}", BudgetSpec(max_budget_nanos=USER_BUDGET_NANOS, duration="monthly")))
    budget_keys = set(rng.sample(keys, int(KEY_BUDGET_SHARE * len(keys)))) - set(over_keys)
    for key in sorted(budget_keys):
        commands.append(upsert(f"key:{key}", BudgetSpec(max_budget_nanos=KEY_BUDGET_NANOS, duration="30d")))
    for key in over_keys:
        commands.append(upsert(f"key:{key}", BudgetSpec(max_budget_nanos=OVER_BUDGET_NANOS, duration="30d")))

    # After the budgets (they are applied first), so each charge falls in their windows.
    occurred_at = (issued_at + timedelta(seconds=1)).isoformat()
    events = []
    for n in range(args.usage_events):
        events.append(
            {
                "event_id": f"bench-check-{seed}-{n}",
                "occurred_at": occurred_at,
                "model": rng.choice(MODELS),
                "user_id": rng.choice(users),
                "team_id": rng.choice(teams),
                "key_id": rng.choice(keys),
                "usage": {"prompt_tokens": rng.randrange(10, 2_000), "completion_tokens": rng.randrange(1, 500)},
            }
        )
    # Every over-budget scope is charged at least once, so it is over whatever the draw.
    for n in range(max(len(over_teams), len(over_keys))):
        events.append(
            {
                "event_id": f"bench-check-{seed}-over-{n}",
                "occurred_at": occurred_at,
                "model": MODELS[0],
                "user_id": rng.choice(users),
                "team_id": over_teams[n % len(over_teams)],
                "key_id": over_keys[n % len(over_keys)],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10},
            }
        )
    book = genai_prices_book()
    spend = sum(price_event(UsageEvent.model_validate(event), book).cost_nanos for event in events)
    scopes = {GLOBAL_SCOPE} | {command.scope_key for command in commands}
    command_scopes = len(scopes)
    for event in events:
        scopes.update((f"user:{event['user_id']}", f"team:{event['team_id']}", f"key:{event['key_id']}"))
    return Plan(teams, users, keys, over_teams, over_keys, commands, events, len(scopes), command_scopes, spend)


def check_paths(plan: Plan, count: int, over_share: float, seed: int = 5) -> list[str]:
    """``count`` check requests with scopes drawn at random; ``over_share`` of them name
    an over-budget team or key."""
    rng = random.Random(seed)
    over_teams, over_keys = set(plan.over_teams), set(plan.over_keys)
    paths = []
    for _ in range(count):
        team, key = rng.choice(plan.teams), rng.choice(plan.keys)
        if rng.random() < over_share:
            if rng.random() < 0.5:
                team = rng.choice(plan.over_teams)
            else:
                key = rng.choice(plan.over_keys)
        else:
            while team in over_teams:
                team = rng.choice(plan.teams)
            while key in over_keys:
                key = rng.choice(plan.keys)
        query = httpx.QueryParams(user=rng.choice(plan.users), team=team, key=key, model=rng.choice(MODELS))
        paths.append(f"/v1/check?{query}")
    return paths


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_until(what: str, timeout_s: float, probe: Any) -> Any:
    """Poll ``probe()`` (async) until it returns its result; a ``str`` it returns means
    "not yet" and says why, for the error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except httpx.HTTPError as exc:
            last = repr(exc)
        if not isinstance(last, str):
            return last
        await asyncio.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"{what}: not within {timeout_s} s (last: {last!r})")


async def load_state(client: httpx.AsyncClient, settings: Settings, plan: Plan) -> int:
    """Publish the plan and wait until the api holds it; returns the scopes it holds."""

    async def ready() -> Any:
        response = await client.get("/readyz")
        return True if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"

    await wait_until("the api is ready", API_READY_TIMEOUT_S, ready)
    # One write through the api: it answers once the worker has applied it.
    budget = {"max_budget": GLOBAL_BUDGET_USD, "budget_duration": "monthly"}
    written = await client.put("/v1/budgets/global/*", json=budget, timeout=30.0)
    written.raise_for_status()
    log(f"global budget written (applied: {written.json()['applied']})")

    async def scopes_held(expected: int) -> Any:
        scopes = (await client.get("/readyz")).json().get("scopes", 0)
        return scopes if scopes >= expected else f"scopes {scopes}/{expected}"

    # Budgets first, usage once they are applied: a charge folded before its scope's
    # budget exists would not count in the budget's first window.
    names = topic_names(settings.topic_prefix)
    commands = [(c.scope_key.encode(), c.model_dump_json().encode()) for c in plan.commands]
    await publish(settings, names.budget_commands, commands)
    await wait_until("every budget applied", STATE_TIMEOUT_S, lambda: scopes_held(plan.command_scopes))
    await publish(settings, names.usage, list(usage_messages(plan.events, BATCH_EVENTS)))
    log(f"published {len(commands):,} budget commands, then {len(plan.events):,} usage events")

    async def global_spent() -> Any:
        response = await client.get("/v1/budgets/global/*")
        spent = response.json().get("total_spend_nanos", 0) if response.status_code == 200 else 0
        expected = plan.expected_global_spend_nanos
        return True if spent >= expected else f"global spend {spent}/{expected}"

    await wait_until("every event charged", STATE_TIMEOUT_S, global_spent)
    held: int = await wait_until(
        "every scope in the api's state", STATE_TIMEOUT_S, lambda: scopes_held(plan.expected_scopes)
    )
    over = [("team", t) for t in plan.over_teams] + [("key", k) for k in plan.over_keys]

    async def all_over() -> Any:
        for kind, scope_id in over:
            response = await client.get("/v1/check", params={kind: scope_id})
            if response.status_code != 402:
                return f"{kind}:{scope_id} answers {response.status_code}"
        return True

    await wait_until("every over-budget scope refused", REFUSED_TIMEOUT_S, all_over)
    log(f"state loaded: {held:,} scopes, {len(over)} of them over budget")
    return held


class HttpPool:
    """The load generator's client: HTTP/1.1 GETs over at most ``connections_max``
    keep-alive connections (a request waits for a free one), bodies by Content-Length.

    httpx spends 1-3 ms of CPU per request on a small shared machine, as much as the api
    spends answering it; this spends tens of microseconds, so the load measures the api.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str], connections_max: int) -> None:
        self.host, self.port = host, port
        self._head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": f"{host}:{port}", **headers}.items())
        self._slots = asyncio.Semaphore(connections_max)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def request(self, path: str) -> bytes:
        """The bytes of ``GET path``."""
        return f"GET {path} HTTP/1.1\r\n{self._head}\r\n".encode()

    async def send(self, request: bytes) -> int:
        """Send one request; its status. A kept-alive connection the server closed while
        idle (uvicorn closes them after 5 s) is replaced once, as browsers do for a GET."""
        await self._slots.acquire()
        try:
            connection, reused = self._take_idle(), True
            if connection is None:
                connection, reused = await asyncio.open_connection(self.host, self.port), False
            try:
                return await self._exchange(connection, request)
            except asyncio.IncompleteReadError as exc:
                if not reused or exc.partial:
                    raise
            return await self._exchange(await asyncio.open_connection(self.host, self.port), request)
        finally:
            self._slots.release()

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _exchange(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> int:
        """One request and its answer on ``connection``; closes it unless it stays usable."""
        reader, writer = connection
        usable = False
        try:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ValueError("an answer without Content-Length")
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
            if length:
                await reader.readexactly(length)
            usable = b"\r\nconnection: close" not in head
            return status
        finally:
            if usable:
                self._idle.append(connection)
            else:
                writer.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()


async def drive(pool: HttpPool, name: str, paths: list[str], rate_rps: float, seconds: float, api_pid: int) -> Phase:
    """Send ``paths`` (cycled) at ``rate_rps`` for ``seconds``, open loop: request n is
    due at start + n / rate whatever happened to the others. The timer wakes up to
    ``TIMER_EARLY_S`` early (the event loop's timers have 1 ms resolution); a latency runs
    from when the request was due, or from its actual send if that was earlier."""
    phase = Phase(name, rate_rps)
    total = max(1, int(rate_rps * seconds))
    interval_s = 1.0 / rate_rps
    requests = [pool.request(path) for path in paths]
    in_flight: set[asyncio.Task[None]] = set()

    async def one(request: bytes, due: float) -> None:
        sent = time.perf_counter()
        phase.send_lags_ms.append(max(0.0, sent - due) * 1_000)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status = str(await pool.send(request))
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            status = type(exc).__name__
        phase.latencies_ms.append((time.perf_counter() - min(sent, due)) * 1_000)
        phase.statuses[status] += 1

    api_cpu, client_cpu = cpu_seconds(api_pid), time.process_time()
    started = time.perf_counter() + 0.01
    for n in range(total):
        due = started + n * interval_s
        delay = due - time.perf_counter() - TIMER_EARLY_S
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= IN_FLIGHT_MAX:
            phase.statuses["not_sent_in_flight_max"] += 1
            continue
        task = asyncio.create_task(one(requests[n % len(requests)], due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        _, late = await asyncio.wait(set(in_flight), timeout=DRAIN_TIMEOUT_S)
        for task in late:
            task.cancel()
        if late:
            phase.statuses["not_answered"] += len(late)
    phase.wall_s = time.perf_counter() - started
    phase.api_cpu_s = cpu_seconds(api_pid) - api_cpu
    phase.client_cpu_s = time.process_time() - client_cpu
    return phase


def summary(phase: Phase, api_idle_cpu_share: float) -> dict[str, Any]:
    """Latency percentiles, errors, and the api's CPU per request net of what it spends
    idle (its consumers' fetch loops), with its busy share of one core."""
    requests = sum(phase.statuses.values())
    api_net_cpu_s = phase.api_cpu_s - api_idle_cpu_share * phase.wall_s
    return {
        "requests": requests,
        "achieved_rps": round(phase.answered / phase.wall_s, 1) if phase.wall_s else 0.0,
        "p50_ms": percentile(phase.latencies_ms, 0.50),
        "p90_ms": percentile(phase.latencies_ms, 0.90),
        "p99_ms": percentile(phase.latencies_ms, 0.99),
        "p999_ms": percentile(phase.latencies_ms, 0.999),
        "max_ms": round(max(phase.latencies_ms), 3) if phase.latencies_ms else None,
        "errors": phase.errors,
        "share_402": round(phase.statuses["402"] / requests, 4) if requests else 0.0,
        "statuses": dict(sorted(phase.statuses.items())),
        "send_lag_p99_ms": percentile(phase.send_lags_ms, 0.99),
        "api_cpu_ms_per_request": round(api_net_cpu_s * 1_000 / requests, 3) if requests else None,
        "api_busy_share": round(phase.api_cpu_s / phase.wall_s, 3) if phase.wall_s else None,
        "client_cpu_ms_per_request": round(phase.client_cpu_s * 1_000 / requests, 3) if requests else None,
    }


async def run(
    args: argparse.Namespace, settings: Settings, api_port: int, master_key: str, api_pid: int
) -> dict[str, Any]:
    plan = build_plan(args, datetime.now(UTC))
    headers = {"Authorization": f"Bearer {master_key}"}
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{api_port}", headers=headers, timeout=30.0) as client:
        scopes = await load_state(client, settings, plan)
    paths = check_paths(plan, max(1, int(args.rate * args.seconds)), args.over_share)
    idle_cpu = cpu_seconds(api_pid)
    await asyncio.sleep(IDLE_SECONDS)
    api_idle_cpu_share = (cpu_seconds(api_pid) - idle_cpu) / IDLE_SECONDS
    load_before = round(os.getloadavg()[0], 2)
    log(f"api idle: {api_idle_cpu_share:.1%} of a core; machine load {load_before} on {os.cpu_count()} cpus")
    pool = HttpPool(HOST, api_port, headers, args.connections)
    try:
        if args.warmup_seconds > 0:
            warm = await drive(pool, "warm-up", paths[::-1], args.rate, args.warmup_seconds, api_pid)
            log(f"warm-up: {dict(warm.statuses)}")
        healthz = await drive(pool, "healthz", ["/healthz"], args.rate, args.seconds, api_pid)
        baseline = summary(healthz, api_idle_cpu_share)
        log(f"healthz: {baseline}")
        await asyncio.sleep(0.5)
        checks = await drive(pool, "check", paths, args.rate, args.seconds, api_pid)
        measured = summary(checks, api_idle_cpu_share)
        log(f"check: {measured}")
    finally:
        pool.close()
    load_after = round(os.getloadavg()[0], 2)
    p99, healthz_p99 = measured["p99_ms"], baseline["p99_ms"]
    return {
        "bench": "check",
        "rate_rps": args.rate,
        "seconds": args.seconds,
        **measured,
        "healthz_p50_ms": baseline["p50_ms"],
        "healthz_p99_ms": healthz_p99,
        "healthz_p999_ms": baseline["p999_ms"],
        "healthz_max_ms": baseline["max_ms"],
        "healthz_errors": baseline["errors"],
        "healthz_statuses": baseline["statuses"],
        "healthz_api_cpu_ms_per_request": baseline["api_cpu_ms_per_request"],
        "healthz_api_busy_share": baseline["api_busy_share"],
        "api_idle_cpu_share": round(api_idle_cpu_share, 3),
        "p99_ratio_vs_healthz": round(p99 / healthz_p99, 3) if p99 is not None and healthz_p99 else None,
        "scopes": scopes,
        "teams": args.teams,
        "users": args.users,
        "keys": args.keys,
        "usage_events": len(plan.events),
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": load_after,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 is not None and p99 <= TARGET_P99_MS,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="check requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each measured phase runs")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="unrecorded checks before measuring")
    parser.add_argument("--teams", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--usage-events", type=int, default=20_000, help="events charged before measuring")
    parser.add_argument("--over-share", type=float, default=0.1, help="share of checks naming an over-budget scope")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--connections", type=int, default=CONNECTIONS_MAX, help="the client's connection pool")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and the DuckDB file (default: a new temp dir)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or min(args.teams, args.users, args.keys) < 1:
        parser.error("--rate, --seconds, --teams, --users and --keys must be positive")
    if not 0 <= args.over_share <= 1:
        parser.error("--over-share is a share within 0..1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints its JSON as the last line of stdout and returns it."""
    args = parse_args(argv)
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    with bench_stack(work_dir, args.partitions) as stack:
        result = asyncio.run(run(args, stack.settings, stack.api_port, stack.master_key, stack.api_pid))
    log(f"logs in {work_dir}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
