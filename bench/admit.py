"""Admission benchmark: ``POST /v1/admit`` latency under mixed admit/settle traffic, and
whether any budget ends up overspent.

    python -m bench.admit [--rate 500] [--seconds 20] [--keys 1000] [--teams 50] [--models 20]

Starts the embedded broker, one worker and the api as children (as ``bench.check`` does),
then sets the state: a budget on every team and on a share of keys (a share of them sized
to run out during the run, so admits are refused with 402), and TPM/RPM capacities on
every model (a share of models tight enough that keys are refused with 429). The calls are
planned up front: key drawn with a skew (some keys are hot), its team, a model, prompt
tokens and ``max_tokens``; each admitted call "runs" for a while and then either fails
(``DELETE /v1/admit/{id}``, ``--release-share`` of them) or is settled by the usage event
with the same id, with the same prompt tokens and at most ``max_tokens`` completion
tokens, so its cost is at most the admit's estimate. Usage is sent in batches, every
``SETTLE_EVERY_S``, through ``POST /v1/usage`` (as the LiteLLM callback does) or straight
to the ``usage`` topic (``--settle-via kafka``, as the SDK producer can).

The load is open loop: admits at ``--rate``; ``GET /v1/check``, ``GET /healthz`` and a
broker probe (one record produced with acks=all, as the api awaits for every hold) each
interleaved at ``--check-rate``; each latency taken from the request's scheduled send time
(the first ``--warmup-seconds`` are not recorded). The baseline, measured in the same run
before the mix, is ``GET /healthz`` alone at the mix's HTTP rate. Afterwards the bench
waits until the worker has folded every settled event, then sums, over every limit with a
max budget, how far its window spend went beyond it: ``overspend_nanos``, 0 when holds work.

Progress goes to stderr; the last line of stdout is JSON. ``target_met`` is the issue's
target, admit p99 <= 5 ms at 500 admits/s; compare ratios across machines, not ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.check import (
    DRAIN_TIMEOUT_S,
    IDLE_SECONDS,
    IN_FLIGHT_MAX,
    REQUEST_TIMEOUT_S,
    TIMER_EARLY_S,
    HttpPool,
    Phase,
    cpu_seconds,
    drive,
    percentile,
    summary,
    wait_until,
)
from bench.live import MODELS, publish
from bench.stack import HOST, bench_stack, log
from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.events import UsageEvent
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import price_event
from ledger.kafka import client_options
from ledger.pricebooks.genai import genai_prices_book
from ledger.publishing import usage_messages
from ledger.settings import Settings
from ledger.topics import topic_names

TARGET_P99_MS = 5.0

# The calls.
KEY_SKEW = 0.7  # key n is drawn with weight 1 / (n + 1) ** KEY_SKEW: a few hot keys
PROMPT_TOKENS = (50, 2_000)
MAX_TOKENS = (256, 512, 1_024)
CALL_SECONDS = (0.05, 1.0)  # how long an admitted call runs before it is settled or released

# Budgets, sized from the planned calls' estimates (the sum of what each scope's calls
# would hold): a scope whose budget is a fraction of it runs out during the run.
RUN_OUT_TEAM_SHARE = 0.2
KEY_BUDGET_SHARE = 0.05
RUN_OUT_FACTOR = 0.3
AMPLE_FACTOR = 3.0
BUDGET_DURATION = "1d"
GLOBAL_BUDGET_USD = 1_000_000

# Capacities, sized from the model's planned calls in the run (or in a minute, at most:
# the shares count per UTC minute). One model in TIGHT_EVERY runs out of TPM, the next
# saturates on RPM (strict shares after that), the others never come close.
TIGHT_EVERY = 5
TPM_TIGHT_FACTOR = 0.25
RPM_TIGHT_FACTOR = 0.8
LOOSE_FACTOR = 10.0

# Bounds.
API_READY_TIMEOUT_S = 90.0
STATE_TIMEOUT_S = 300.0
HOLDS_TIMEOUT_S = 60.0
SETTLE_EVERY_S = 0.1
SETTLE_BATCH_MAX = 500
CONNECTIONS_MAX = 32


@dataclass(frozen=True, slots=True)
class Call:
    """One planned call: what is admitted, and how it ends if it is."""

    request_id: str
    key: str
    team: str
    model: str
    prompt_tokens: int
    max_tokens: int
    completion_tokens: int
    estimate_nanos: int  # what the api's estimate should be (prompt + max_tokens, priced)
    cost_nanos: int  # what the settled usage costs: at most the estimate
    released: bool  # the call fails: released, never settled
    call_s: float

    def admit_body(self) -> bytes:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "model": self.model,
                "team": self.team,
                "key": self.key,
                "prompt_tokens": self.prompt_tokens,
                "max_tokens": self.max_tokens,
            }
        )

    def usage_event(self, occurred_at: str) -> dict[str, Any]:
        return {
            "event_id": self.request_id,
            "occurred_at": occurred_at,
            "model": self.model,
            "team_id": self.team,
            "key_id": self.key,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
        }


@dataclass(frozen=True)
class Plan:
    """The calls, the budgets and capacities they meet, and the checks in between."""

    calls: list[Call]
    commands: list[BudgetCommand]
    capacities: dict[str, dict[str, int]]
    check_paths: list[str]
    run_out_scopes: list[str]


def price(book: PriceBook, model: str, prompt_tokens: int, completion_tokens: int, at: datetime) -> int:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    event = UsageEvent.model_validate({"event_id": "priced", "occurred_at": at, "model": model, "usage": usage})
    return price_event(event, book).cost_nanos


def plan_calls(args: argparse.Namespace, rng: random.Random) -> list[Call]:
    """Every admit of the run, warm-up included, at ``--rate``."""
    book = genai_prices_book()
    at = datetime.now(UTC)
    models = list(MODELS[: args.models])
    weights = [1 / (n + 1) ** KEY_SKEW for n in range(args.keys)]
    tag = uuid.uuid4().hex[:8]
    total = max(1, int(args.rate * (args.warmup_seconds + args.seconds)))
    calls = []
    for n, key_n in enumerate(rng.choices(range(args.keys), weights, k=total)):
        model = rng.choice(models)
        prompt = rng.randint(*PROMPT_TOKENS)
        max_tokens = rng.choice(MAX_TOKENS)
        completion = rng.randint(1, max_tokens)
        estimate, actual = price(book, model, prompt, max_tokens, at), price(book, model, prompt, completion, at)
        assert actual <= estimate, (model, prompt, completion, max_tokens)
        calls.append(
            Call(
                request_id=f"admit-{tag}-{n}",
                key=f"key-{key_n}",
                team=f"team-{key_n % args.teams}",
                model=model,
                prompt_tokens=prompt,
                max_tokens=max_tokens,
                completion_tokens=completion,
                estimate_nanos=estimate,
                cost_nanos=actual,
                released=rng.random() < args.release_share,
                call_s=rng.uniform(*CALL_SECONDS),
            )
        )
    return calls


def budget_commands(
    args: argparse.Namespace, calls: list[Call], rng: random.Random
) -> tuple[list[BudgetCommand], list[str]]:
    """A budget on every team and on a share of keys; some sized to run out. Returns the
    commands and the scopes meant to run out."""
    planned: Counter[str] = Counter()
    for call in calls:
        planned[f"team:{call.team}"] += call.estimate_nanos
        planned[f"key:{call.key}"] += call.estimate_nanos
    teams = [f"team:team-{n}" for n in range(args.teams)]
    keys = [f"key:key-{n}" for n in range(args.keys)]
    budget_keys = rng.sample(keys, max(1, round(KEY_BUDGET_SHARE * len(keys))))
    run_out = set(rng.sample(teams, max(1, round(RUN_OUT_TEAM_SHARE * len(teams)))))
    run_out.update(budget_keys[: len(budget_keys) // 2])
    issued_at = datetime.now(UTC)
    commands = []
    for scope in teams + budget_keys:
        factor = RUN_OUT_FACTOR if scope in run_out else AMPLE_FACTOR
        spec = BudgetSpec(max_budget_nanos=max(1, int(planned[scope] * factor)), duration=BUDGET_DURATION)
        commands.append(
            BudgetCommand(
                command_id=f"bench-{uuid.uuid4().hex}",
                scope_key=scope,
                action="upsert",
                issued_at=issued_at,
                budgets=(spec,),
            )
        )
    return commands, sorted(run_out)


def model_capacities(args: argparse.Namespace, calls: list[Call]) -> dict[str, dict[str, int]]:
    """Each model's TPM and RPM, from its planned calls per second over the run."""
    window_s = min(60.0, args.warmup_seconds + args.seconds)
    run_s = args.warmup_seconds + args.seconds
    count: Counter[str] = Counter(call.model for call in calls)
    tokens: Counter[str] = Counter()
    for call in calls:
        tokens[call.model] += call.prompt_tokens + call.max_tokens  # what an admit counts until settled
    found = {}
    for n, model in enumerate(MODELS[: args.models]):
        calls_in_window = count[model] / run_s * window_s
        tokens_in_window = tokens[model] / run_s * window_s
        limits = {
            "tpm": max(1, math.ceil(LOOSE_FACTOR * tokens[model] / run_s * 60)),
            "rpm": max(1, math.ceil(LOOSE_FACTOR * count[model] / run_s * 60)),
        }
        if n % TIGHT_EVERY == 0:
            limits["tpm"] = max(1, int(TPM_TIGHT_FACTOR * tokens_in_window))
        elif n % TIGHT_EVERY == 1:
            limits["rpm"] = max(1, int(RPM_TIGHT_FACTOR * calls_in_window))
        found[model] = limits
    return found


def build_plan(args: argparse.Namespace, seed: int = 17) -> Plan:
    rng = random.Random(seed)
    calls = plan_calls(args, rng)
    commands, run_out = budget_commands(args, calls, rng)
    check_paths = []
    for _ in range(max(1, int(args.check_rate * args.seconds))):
        call = rng.choice(calls)
        query = httpx.QueryParams(team=call.team, key=call.key, model=call.model)
        check_paths.append(f"/v1/check?{query}")
    return Plan(calls, commands, model_capacities(args, calls), check_paths, run_out)


class JsonPool(HttpPool):
    """``HttpPool`` with POST and DELETE requests."""

    def post(self, path: str, body: bytes) -> bytes:
        length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return f"POST {path} HTTP/1.1\r\n{self._head}{length}\r\n".encode() + body

    def delete(self, path: str) -> bytes:
        return f"DELETE {path} HTTP/1.1\r\n{self._head}\r\n".encode()


@dataclass
class Mix:
    """The mixed phase: admits on schedule, each admitted call settled or released after
    it has run; checks and healthz probes interleaved. Latencies are recorded for what was
    due after the warm-up; counts are of the whole run."""

    pool: JsonPool
    plan: Plan
    warmup_s: float
    settle_publish: Any  # async (events) -> status text
    producer: AIOKafkaProducer  # for the broker probe: acks=all, as the api's
    probe_topic: str
    admit: Phase
    check: Phase
    healthz: Phase
    broker: Phase = field(default_factory=lambda: Phase("broker", 0.0))
    release: Phase = field(default_factory=lambda: Phase("release", 0.0))
    settle: Phase = field(default_factory=lambda: Phase("settle", 0.0))
    admits: Counter[str] = field(default_factory=Counter)
    releases: Counter[str] = field(default_factory=Counter)
    settled: int = 0
    settle_failed: int = 0
    settled_cost_nanos: int = 0
    pending: list[tuple[float, int]] = field(default_factory=list)  # heap: (due, call index)
    ends: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, seconds: float, check_rate: float) -> float:
        """Drive the schedule; returns its wall time (the last settle included)."""
        calls, rate = self.plan.calls, self.admit.rate_rps
        admit_requests = [self.pool.post("/v1/admit", call.admit_body()) for call in calls]
        check_requests = [self.pool.request(path) for path in self.plan.check_paths]
        healthz_request = self.pool.request("/healthz")
        schedule = [(n / rate, 0, n) for n in range(len(calls))]
        probes = max(1, int(check_rate * seconds))
        schedule += [(self.warmup_s + m / check_rate, 1, m) for m in range(probes)]
        schedule += [(self.warmup_s + (m + 0.5) / check_rate, 2, m) for m in range(probes)]
        schedule += [(self.warmup_s + (m + 0.25) / check_rate, 3, m) for m in range(probes)]
        schedule.sort()
        statuses = (self.admits, self.check.statuses, self.healthz.statuses, self.broker.statuses)
        in_flight: dict[asyncio.Task[None], Counter[str]] = {}  # a task, and where it counts if late
        stop = asyncio.Event()
        started = time.perf_counter() + 0.01
        settler = asyncio.create_task(self._settle_loop(stop))
        for offset, kind, n in schedule:
            due = started + offset
            delay = due - time.perf_counter() - TIMER_EARLY_S
            if delay > 0:
                await asyncio.sleep(delay)
            measured = offset >= self.warmup_s
            if len(in_flight) >= IN_FLIGHT_MAX:
                statuses[kind]["not_sent_in_flight_max"] += 1
                continue
            if kind == 0:
                task = asyncio.create_task(self._admit(n, admit_requests[n], due, measured))
            elif kind == 1:
                task = asyncio.create_task(self._get(self.check, check_requests[n % len(check_requests)], due))
            elif kind == 2:
                task = asyncio.create_task(self._get(self.healthz, healthz_request, due))
            else:
                task = asyncio.create_task(self._probe_broker(due))
            in_flight[task] = statuses[kind]
            task.add_done_callback(in_flight.pop)
        await drain(in_flight)
        await drain({task: self.releases for task in self.ends})  # made by the admits
        stop.set()
        await settler
        return time.perf_counter() - started

    async def _exchange(self, request: bytes) -> str:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return str(await self.pool.send(request))
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return type(exc).__name__

    def _record(self, phase: Phase | None, status: str, sent: float, due: float) -> None:
        if phase is not None:
            phase.send_lags_ms.append(max(0.0, sent - due) * 1_000)
            phase.latencies_ms.append((time.perf_counter() - min(sent, due)) * 1_000)
            phase.statuses[status] += 1

    async def _get(self, phase: Phase, request: bytes, due: float) -> None:
        sent = time.perf_counter()
        self._record(phase, await self._exchange(request), sent, due)

    async def _probe_broker(self, due: float) -> None:
        """One record acknowledged by the broker, as the api awaits for each hold."""
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await self.producer.send_and_wait(self.probe_topic, b"probe")
            status = "acked"
        except Exception as exc:  # the broker's errors are many; any is a failed probe
            status = type(exc).__name__
        self._record(self.broker, status, sent, due)

    async def _admit(self, n: int, request: bytes, due: float, measured: bool) -> None:
        sent = time.perf_counter()
        status = await self._exchange(request)
        self._record(self.admit if measured else None, status, sent, due)
        self.admits[status] += 1
        if status != "200":
            return
        call = self.plan.calls[n]
        ends_at = time.perf_counter() + call.call_s
        if call.released:
            task = asyncio.create_task(self._release(call, ends_at, measured))
            self.ends.add(task)
            task.add_done_callback(self.ends.discard)
        else:
            heapq.heappush(self.pending, (ends_at, n))

    async def _release(self, call: Call, due: float, measured: bool) -> None:
        delay = due - time.perf_counter() - TIMER_EARLY_S
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        status = await self._exchange(self.pool.delete(f"/v1/admit/{call.request_id}"))
        self._record(self.release if measured else None, status, sent, due)
        self.releases[status] += 1

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        """Every ``SETTLE_EVERY_S``, the usage of the calls that have ended, in batches;
        once ``stop`` is set, all that is left, at once."""
        tick = time.perf_counter()
        while True:
            tick += SETTLE_EVERY_S
            delay = tick - time.perf_counter()
            if delay > 0 and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            finishing = stop.is_set()
            now = time.perf_counter()
            ended = []
            while self.pending and (finishing or self.pending[0][0] <= now):
                ended.append(self.plan.calls[heapq.heappop(self.pending)[1]])
            occurred_at = datetime.now(UTC).isoformat()
            for start in range(0, len(ended), SETTLE_BATCH_MAX):
                chunk = ended[start : start + SETTLE_BATCH_MAX]
                sent = time.perf_counter()
                status = await self.settle_publish([call.usage_event(occurred_at) for call in chunk])
                self._record(self.settle, status, sent, sent)
                if status == "202":
                    self.settled += len(chunk)
                    self.settled_cost_nanos += sum(call.cost_nanos for call in chunk)
                else:
                    self.settle_failed += len(chunk)
            if finishing:
                return


async def drain(tasks: dict[asyncio.Task[None], Counter[str]]) -> None:
    """Wait for ``tasks``; one still running after its time-out is cancelled and counted
    ``not_answered`` in its counter."""
    owners = dict(tasks)
    if owners:
        _, late = await asyncio.wait(set(owners), timeout=DRAIN_TIMEOUT_S + CALL_SECONDS[1])
        for task in late:
            task.cancel()
            owners[task]["not_answered"] += 1


async def load_state(client: httpx.AsyncClient, settings: Settings, plan: Plan) -> int:
    """Budgets and capacities in the api; returns the scopes it holds."""

    async def ready() -> Any:
        response = await client.get("/readyz")
        return True if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"

    await wait_until("the api is ready", API_READY_TIMEOUT_S, ready)
    budget = {"max_budget": GLOBAL_BUDGET_USD, "budget_duration": BUDGET_DURATION}
    (await client.put("/v1/budgets/global/*", json=budget)).raise_for_status()
    names = topic_names(settings.topic_prefix)
    commands = [(c.scope_key.encode(), c.model_dump_json().encode()) for c in plan.commands]
    await publish(settings, names.budget_commands, commands)
    expected = len(plan.commands) + 1

    async def scopes_held() -> Any:
        scopes = (await client.get("/readyz")).json().get("scopes", 0)
        return scopes if scopes >= expected else f"scopes {scopes}/{expected}"

    held: int = await wait_until("every budget applied", STATE_TIMEOUT_S, scopes_held)
    for model, limits in plan.capacities.items():
        answer = await client.put(f"/v1/models/{model}/limits", json=limits)
        if answer.status_code != 200:
            raise RuntimeError(f"limits of {model}: {answer.status_code} {answer.text[:200]}")
    log(f"state loaded: {held:,} scopes, {len(plan.capacities)} models with capacities")
    return held


async def settled_state(client: httpx.AsyncClient, mix: Mix, admit_unknown: int) -> dict[str, Any]:
    """Wait until the api's state has every settled event and no hold is left open (but
    those whose admit got no answer), then sum the overspend over every capped limit."""

    async def folded() -> Any:
        teams = (await client.get("/v1/budgets", params={"kind": "team"})).json()
        entries = sum(team["entry_count"] for team in teams)
        spent = (await client.get("/v1/budgets/global/*")).json().get("total_spend_nanos", 0)
        if entries >= mix.settled and spent >= mix.settled_cost_nanos:
            return True
        return f"team entries {entries}/{mix.settled}, global spend {spent}/{mix.settled_cost_nanos}"

    await wait_until("every settled event folded", STATE_TIMEOUT_S, folded)
    expected_open = admit_unknown + mix.settle_failed + sum(n for s, n in mix.releases.items() if s != "200")

    async def holds_closed() -> Any:
        count = (await client.get("/v1/admissions", params={"state": "open", "limit": 1})).json()["count"]
        return count if count <= expected_open else f"open holds {count}, expected {expected_open}"

    try:
        open_holds = await wait_until("holds settled", HOLDS_TIMEOUT_S, holds_closed)
    except TimeoutError as exc:
        log(str(exc))
        open_holds = (await client.get("/v1/admissions", params={"state": "open", "limit": 1})).json()["count"]
    budgets = (await client.get("/v1/budgets")).json()
    overspend = capped = 0
    for budget in budgets:
        for limit in budget["limits"]:
            cap = limit["max_budget_nanos"]
            if cap is not None:
                capped += 1
                overspend += max(0, limit["spend_nanos"] - cap)
    spend = {budget["scope_key"]: budget["spend_nanos"] for budget in budgets}
    caps = {budget["scope_key"]: budget["max_budget_nanos"] for budget in budgets}
    run_out = [scope for scope in mix.plan.run_out_scopes if caps.get(scope)]
    return {
        "overspend_nanos": overspend,
        "capped_limits": capped,
        "open_holds_after": open_holds,
        "run_out_spend_share": round(sum(spend[s] for s in run_out) / sum(caps[s] for s in run_out), 4)
        if run_out
        else None,
    }


def settle_over_api(pool: JsonPool) -> Any:
    async def settle(events: list[dict[str, Any]]) -> str:
        request = pool.post("/v1/usage", orjson.dumps({"events": events}))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return str(await pool.send(request))
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
            return type(exc).__name__

    return settle


def phase_fields(prefix: str, phase: Phase) -> dict[str, Any]:
    return {
        f"{prefix}_p50_ms": percentile(phase.latencies_ms, 0.50),
        f"{prefix}_p99_ms": percentile(phase.latencies_ms, 0.99),
        f"{prefix}_statuses": dict(sorted(phase.statuses.items())),
    }


async def run(
    args: argparse.Namespace, settings: Settings, api_port: int, master_key: str, api_pid: int
) -> dict[str, Any]:
    plan = build_plan(args)
    headers = {"Authorization": f"Bearer {master_key}"}
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{api_port}", headers=headers, timeout=30.0) as client:
        scopes = await load_state(client, settings, plan)
        idle_cpu = cpu_seconds(api_pid)
        await asyncio.sleep(IDLE_SECONDS)
        api_idle_cpu_share = (cpu_seconds(api_pid) - idle_cpu) / IDLE_SECONDS
        load_before = round(os.getloadavg()[0], 2)
        log(f"api idle: {api_idle_cpu_share:.1%} of a core; machine load {load_before} on {os.cpu_count()} cpus")
        pool = JsonPool(HOST, api_port, headers, args.connections)
        producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=1)
        await producer.start()
        try:
            # The baseline: healthz alone at about the mix's HTTP rate.
            http_rate = args.rate * (1 + args.release_share) + 2 * args.check_rate
            if args.warmup_seconds > 0:
                await drive(pool, "warm-up", ["/healthz"], http_rate, args.warmup_seconds, api_pid)
            baseline = await drive(pool, "healthz", ["/healthz"], http_rate, args.seconds, api_pid)
            healthz = summary(baseline, api_idle_cpu_share)
            log(f"healthz alone at {http_rate:.0f}/s: {healthz}")
            if args.settle_via == "kafka":
                settle = settle_over_kafka(producer, topic_names(settings.topic_prefix).usage)
            else:
                settle = settle_over_api(pool)
            mix = Mix(
                pool,
                plan,
                args.warmup_seconds,
                settle,
                producer,
                probe_topic(settings),
                admit=Phase("admit", args.rate),
                check=Phase("check", args.check_rate),
                healthz=Phase("healthz-in-mix", args.check_rate),
            )
            await asyncio.sleep(0.5)
            api_cpu, loop_cpu, client_cpu = cpu_seconds(api_pid), loop_cpu_seconds(api_pid), time.process_time()
            wall_s = await mix.run(args.seconds, args.check_rate)
            api_cpu_s, client_cpu_s = cpu_seconds(api_pid) - api_cpu, time.process_time() - client_cpu
            api_loop_cpu_s = loop_cpu_seconds(api_pid) - loop_cpu
        finally:
            pool.close()
            await producer.stop()
        load_after = round(os.getloadavg()[0], 2)
        admit_unknown = sum(n for status, n in mix.admits.items() if status not in ("200", "402", "429"))
        log(f"admits {dict(mix.admits)}, releases {dict(mix.releases)}, settled {mix.settled:,}")
        final = await settled_state(client, mix, admit_unknown)
    http_requests = sum(len(p.latencies_ms) for p in (mix.check, mix.healthz, mix.settle))
    http_requests += sum(mix.admits.values()) + sum(mix.releases.values())
    admit = mix.admit
    p99 = percentile(admit.latencies_ms, 0.99)
    check_p99 = percentile(mix.check.latencies_ms, 0.99)
    healthz_p99 = healthz["p99_ms"]

    def ratio(value: float | None) -> float | None:
        return round(value / healthz_p99, 3) if value is not None and healthz_p99 else None

    return {
        "bench": "admit",
        "rate_rps": args.rate,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "check_rate_rps": args.check_rate,
        "settle_via": args.settle_via,
        "admits": sum(mix.admits.values()),
        "admitted": mix.admits["200"],
        "refused_budget": mix.admits["402"],
        "refused_rate": mix.admits["429"],
        "admit_errors": admit_unknown,
        "released": mix.releases["200"],
        "release_errors": sum(n for status, n in mix.releases.items() if status != "200"),
        "settled": mix.settled,
        "settle_failed": mix.settle_failed,
        "settle_batches": len(mix.settle.latencies_ms),
        "settled_cost_nanos": mix.settled_cost_nanos,
        **final,
        "admit_measured": len(admit.latencies_ms),
        "admit_p50_ms": percentile(admit.latencies_ms, 0.50),
        "admit_p90_ms": percentile(admit.latencies_ms, 0.90),
        "admit_p99_ms": p99,
        "admit_p999_ms": percentile(admit.latencies_ms, 0.999),
        "admit_max_ms": round(max(admit.latencies_ms), 3) if admit.latencies_ms else None,
        "admit_send_lag_p99_ms": percentile(admit.send_lags_ms, 0.99),
        "check_p50_ms": percentile(mix.check.latencies_ms, 0.50),
        "check_p99_ms": check_p99,
        "check_statuses": dict(sorted(mix.check.statuses.items())),
        **phase_fields("release", mix.release),
        **phase_fields("settle", mix.settle),
        **phase_fields("healthz_in_mix", mix.healthz),
        **phase_fields("broker_ack", mix.broker),
        "healthz_rate_rps": round(http_rate, 1),
        "healthz_p50_ms": healthz["p50_ms"],
        "healthz_p99_ms": healthz_p99,
        "healthz_errors": healthz["errors"],
        "admit_p99_ratio_vs_healthz": ratio(p99),
        "check_p99_ratio_vs_healthz": ratio(check_p99),
        "http_rps": round(http_requests / wall_s, 1) if wall_s else 0.0,
        "api_busy_share": round(api_cpu_s / wall_s, 3) if wall_s else None,
        "api_loop_busy_share": round(api_loop_cpu_s / wall_s, 3) if wall_s else None,
        "api_cpu_ms_per_request": round((api_cpu_s - api_idle_cpu_share * wall_s) * 1_000 / http_requests, 3)
        if http_requests
        else None,
        "client_cpu_ms_per_request": round(client_cpu_s * 1_000 / http_requests, 3) if http_requests else None,
        "api_idle_cpu_share": round(api_idle_cpu_share, 3),
        "scopes": scopes,
        "keys": args.keys,
        "teams": args.teams,
        "models": args.models,
        "capacities": plan.capacities,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": load_after,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 is not None and p99 <= TARGET_P99_MS,
    }


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of the api's main thread, which runs its event loop (the rest of the
    process's CPU goes to threads: DuckDB's, the projector's, Kafka's)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}bench-broker-probe"


async def create_probe_topic(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(probe_topic(settings), 1, settings.topic_replication_factor)])
    finally:
        await admin.close()


def settle_over_kafka(producer: AIOKafkaProducer, topic: str) -> Any:
    async def settle(events: list[dict[str, Any]]) -> str:
        try:
            for key, value in usage_messages(events):
                await producer.send_and_wait(topic, value, key=key)
        except Exception as exc:  # the broker's errors are many; any is a failed settle
            return type(exc).__name__
        return "202"

    return settle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="admits per second (open loop)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each measured phase runs")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="admits not recorded, before measuring")
    parser.add_argument("--check-rate", type=float, default=None, help="checks (and healthz probes) per second")
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--models", type=int, default=20, help=f"at most {len(MODELS)}")
    parser.add_argument("--release-share", type=float, default=0.1, help="share of admitted calls released")
    parser.add_argument("--settle-via", choices=("api", "kafka"), default="api", help="POST /v1/usage or the topic")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--connections", type=int, default=CONNECTIONS_MAX, help="the client's connection pool")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and the DuckDB file (default: a new temp dir)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or min(args.keys, args.teams, args.models) < 1:
        parser.error("--rate, --seconds, --keys, --teams and --models must be positive")
    if args.models > len(MODELS) or args.teams > args.keys:
        parser.error(f"--models is at most {len(MODELS)}, --teams at most --keys")
    if not 0 <= args.release_share <= 1 or args.warmup_seconds < 0:
        parser.error("--release-share is a share within 0..1, --warmup-seconds at least 0")
    if args.check_rate is None:
        args.check_rate = max(1.0, args.rate / 10)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints its JSON as the last line of stdout and returns it."""
    args = parse_args(argv)
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-admit-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    with bench_stack(work_dir, args.partitions, lambda settings: asyncio.run(create_probe_topic(settings))) as stack:
        result = asyncio.run(run(args, stack.settings, stack.api_port, stack.master_key, stack.api_pid))
    log(f"logs in {work_dir}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
