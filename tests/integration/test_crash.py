"""The crash test (DESIGN section 6): 200,000 usage records, with duplicates, malformed
and unpriced ones, budget resets and limit changes, while the worker is SIGKILLed five
times and the api (the projector) twice at random moments, each restarted. At the end
nothing is lost or charged twice, live equals the replay of the store to the nano, and
every crossing was alerted. Throughout, a reader in another process queries the store
every 100 ms: its counts only grow, and no read sees part of a ledger-entries batch. The
soak (``pytest -m soak``; ``make test`` skips it) does the same with 1,000,000 records,
12 worker kills and 4 api kills.

Why the budgeted scopes get their events through one partition, with event times a little
ahead of the clock: the live fold keeps one window per limit and closes it by event time
or by the clock, so an event folded after its window closed does not count in it (DESIGN
section 5), while the replay counts every event in its own window. With events folded in
event-time order, and windows the clock does not close first, the two must agree on every
window's crossings, and that is what is checked here. Everything else (dedup, pricing, the
other scopes) runs over all partitions.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from ledger.domain.scopes import GLOBAL_SCOPE
from ledger.pricebooks.genai import genai_prices_book
from ledger.processes import ChildProcess
from ledger.publishing import usage_messages
from ledger.replay.engine import load_crossings
from ledger.replay.reference import CROSSING_KINDS
from ledger.replay.service import check_equality
from ledger.store.location import StoreLocation
from ledger.store.schema import open_store
from tests.integration.builders import MakeLedger, command, cost_nanos, name_routed_to
from tests.integration.conftest import ApiProcess, Ledger
from tests.integration.live_io import Producer, StateFollower
from tests.stores import lake_at

RECORDS_PER_CHUNK = 2_000
DUPLICATES_PER_CHUNK = 100  # 5%
MALFORMED_PER_CHUNK = 20  # 1%
UNPRICED_PER_CHUNK = 10  # 0.5%
PRICED_PER_CHUNK = RECORDS_PER_CHUNK - DUPLICATES_PER_CHUNK - MALFORMED_PER_CHUNK - UNPRICED_PER_CHUNK
BUDGETED_SHARE = 0.2
CHUNK_EVERY_S = 0.35
KILL_SPACING_CHUNKS = 4
RECENT_EVENTS_MAX = 20_000  # duplicates are copies of these
COMMAND_EVERY_CHUNKS = 10
EVENT_TIME_LEAD_S = 120.0  # longer than any outage of the worker in the test
PARTITIONS = 4
BUDGETED_PARTITION = 0
CATCH_UP_TIMEOUT_S = 300.0
# The soak's worker outages grow: the embedded broker does not compact changelogs, so a
# restarted worker reads every budget-state record ever written (5 s at first, over 3 min
# after 20 kills and 1.6 million records, measured).
SOAK_EVENT_TIME_LEAD_S = SOAK_CATCH_UP_TIMEOUT_S = 1_800.0

TEAM_1S, TEAM_1M, KEY_BOTH = "team:crash-1s", "team:crash-1m", "key:crash-both"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "claude-3-5-haiku-20241022")
READ_EVERY_S = 0.1
READER_SECONDS_MAX = 1_800.0

# The reader: one read-only connection, a fresh snapshot per read (each read is one
# transaction), a JSON line per read until the stop file appears (or its time is up).
READER = """
import json, sys, time
from pathlib import Path
from ledger.store.location import StoreLocation
from ledger.store.schema import StoreUnavailable, open_store
catalog, data_path, out, stop, every_s, seconds_max = sys.argv[1:7]
deadline = time.monotonic() + float(seconds_max)
connection = None
with open(out, "w") as lines:
    while not Path(stop).exists() and time.monotonic() < deadline:
        try:
            if connection is None:
                connection = open_store(StoreLocation(catalog, data_path), read_only=True)
            else:
                connection.commit()
                connection.begin()
            count, total = connection.execute("SELECT count(*), sum(cost_nanos) FROM ledger_entries").fetchone()
            batches = dict(connection.execute("SELECT batch_id, count(*) FROM ledger_entries GROUP BY 1").fetchall())
            lines.write(json.dumps({"count": count, "sum": int(total or 0), "batches": batches}) + "\\n")
        except StoreUnavailable:  # the api has not made its tables yet
            pass
        except Exception as exc:
            lines.write(json.dumps({"error": repr(exc)}) + "\\n")
        lines.flush()
        time.sleep(float(every_s))
"""


class EventClock:
    """Event times a fixed lead ahead of the wall clock, strictly increasing."""

    def __init__(self, lead_s: float) -> None:
        self.lead = timedelta(seconds=lead_s)
        self.last = datetime.now(UTC)

    def next(self) -> datetime:
        self.last = max(datetime.now(UTC) + self.lead, self.last + timedelta(microseconds=1))
        return self.last


@dataclass
class Published:
    """What the test sent, to check the ledger against."""

    priced: dict[str, dict[str, Any]] = field(default_factory=dict)
    unpriced: set[str] = field(default_factory=set)
    malformed: int = 0
    invalid_in_batches: set[str] = field(default_factory=set)
    duplicates: int = 0
    budgeted: Counter[str] = field(default_factory=Counter)
    commands: int = 0
    records: int = 0


class Crash:
    """The running system under test: one worker, one api, restarted after each kill."""

    def __init__(
        self,
        ledger: Ledger,
        store: Path,
        live: StateFollower,
        producer: Producer,
        seed: int,
        *,
        event_time_lead_s: float,
        catch_up_timeout_s: float,
    ) -> None:
        self.ledger, self.store, self.live, self.producer = ledger, store, live, producer
        self.rng = random.Random(seed)
        self.clock = EventClock(event_time_lead_s)
        self.catch_up_timeout_s = catch_up_timeout_s
        self.sent = Published()
        self.worker: ChildProcess | None = ledger.start_worker()
        self.api: ApiProcess | None = ledger.start_api(store)
        self.worker_kills = self.api_kills = 0
        self._event_ids = iter(range(10**9))
        self.recent: list[dict[str, Any]] = []

    # -- records ----------------------------------------------------------------------

    def _event(self, event_id: str, *, model: str | None = None, **scopes: str) -> dict[str, Any]:
        rng = self.rng
        event = {
            "event_id": event_id,
            "occurred_at": self.clock.next().isoformat(),
            "model": model or rng.choice(MODELS),
            "user_id": f"user-{rng.randrange(300)}",
            "usage": {"prompt_tokens": rng.randrange(20, 2_000), "completion_tokens": rng.randrange(1, 400)},
            **scopes,
        }
        if rng.random() < 0.3:
            event["end_user"] = f"end-user-{rng.randrange(1_000)}"
        return event

    def _budgeted_event(self) -> dict[str, Any]:
        """An event charging the budgeted scopes, routed through the one partition."""
        event_id = name_routed_to(BUDGETED_PARTITION, f"b{next(self._event_ids)}", PARTITIONS)
        team = TEAM_1S if self.rng.random() < 0.5 else TEAM_1M
        event = self._event(event_id, model="gpt-4o-mini", team_id=team.split(":")[1], key_id=KEY_BOTH.split(":")[1])
        self.sent.budgeted.update([team, KEY_BOTH])
        return event

    def _other_event(self) -> dict[str, Any]:
        rng = self.rng
        return self._event(
            f"e{next(self._event_ids)}", team_id=f"team-{rng.randrange(20)}", key_id=f"key-{rng.randrange(60)}"
        )

    def _malformed(self, n: int) -> bytes:
        kinds = (
            b'{"event_id": "m%d", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 1',  # truncated
            b"not json at all %d",
            b'["an", "array", %d]',
            b'{"event_id": "m%d", "occurred_at": "yesterday", "model": "gpt-4o-mini", "usage": {}}',
            b'{"event_id": "m%d", "model": "gpt-4o-mini"}',  # no occurred_at
        )
        return kinds[n % len(kinds)] % n

    def publish_chunk(self) -> None:
        rng, sent = self.rng, self.sent
        budgeted, others = [], []
        for _ in range(PRICED_PER_CHUNK):
            if rng.random() < BUDGETED_SHARE:
                budgeted.append(self._budgeted_event())
            else:
                others.append(self._other_event())
        unpriced = [
            self._event(f"u{next(self._event_ids)}", model="crash-unpriced-model") for _ in range(UNPRICED_PER_CHUNK)
        ]
        invalid = [
            {**self._other_event(), "usage": {"prompt_tokens": -5, "completion_tokens": 1}}
            for _ in range(MALFORMED_PER_CHUNK // 4)
        ]
        malformed = [self._malformed(sent.malformed + n) for n in range(MALFORMED_PER_CHUNK - len(invalid))]
        earlier = self.recent + budgeted + others
        copies = [rng.choice(earlier) for _ in range(DUPLICATES_PER_CHUNK)]

        mixed = others + unpriced + invalid
        rng.shuffle(mixed)
        records: list[tuple[bytes | None, bytes, int | None]] = [
            (key, value, None) for key, value in usage_messages(mixed, 100)
        ]
        records += [(key, value, BUDGETED_PARTITION) for key, value in usage_messages(budgeted, 50)]
        records += [(f"bad-{n}".encode(), value, None) for n, value in enumerate(malformed, sent.malformed)]
        self.producer.send(self.ledger.topics.usage, records)
        # Copies after their originals: a budgeted one on the same partition, behind it.
        copy_records = [
            (
                f"again-{copy['event_id']}".encode(),
                orjson.dumps(copy),
                BUDGETED_PARTITION if copy["event_id"].startswith("b") else None,
            )
            for copy in copies
        ]
        self.producer.send(self.ledger.topics.usage, copy_records)

        sent.priced.update((event["event_id"], event) for event in budgeted + others)
        self.recent = (self.recent + budgeted + others)[-RECENT_EVENTS_MAX:]
        sent.unpriced.update(event["event_id"] for event in unpriced)
        sent.invalid_in_batches.update(event["event_id"] for event in invalid)
        sent.malformed += len(malformed)
        sent.duplicates += len(copies)
        sent.records += len(budgeted) + len(others) + len(unpriced) + len(invalid) + len(malformed) + len(copies)

    # -- budget commands --------------------------------------------------------------

    def publish_command(self, scope_key: str, action: str = "upsert", **fields: Any) -> None:
        """Publish a budget command once the budgeted scopes have folded every event sent
        so far, and wait until the worker applied it (so no event is older than it)."""
        self.ensure_worker()
        for scope, count in self.sent.budgeted.items():
            self.live.wait_for(
                scope, lambda s, n=count: s.state.entry_count >= n, f"{scope} caught up", self.catch_up_timeout_s
            )
        _, body = command(scope_key, action, issued_at=self.clock.next().isoformat(), **fields)
        (sent,) = self.producer.send(
            self.ledger.topics.budget_commands, [(scope_key.encode(), orjson.dumps(body), None)]
        )
        source = f"c{sent.partition}"
        self.live.wait_for(
            scope_key,
            lambda s: s.applied.get(source, -1) >= sent.offset,
            f"{action} of {scope_key}",
            self.catch_up_timeout_s,
        )
        self.sent.commands += 1

    def budgets(self, round_: int) -> None:
        """The budget changes of one round: resets, raised and lowered limits."""
        per_event = 30_000  # about what one budgeted event costs, in nanos
        step = round_ % 4
        if step == 0:
            self.publish_command(TEAM_1S, "reset")
        elif step == 1:
            limit = per_event * self.rng.choice((3_000, 6_000, 12_000))
            self.publish_command(TEAM_1M, budgets=[{"duration": "1m", "max_budget_nanos": limit}])
        elif step == 2:
            self.publish_command(TEAM_1M, "reset")
        else:
            limit = per_event * self.rng.choice((60, 120, 240))
            budgets = [{"duration": "1s", "max_budget_nanos": limit, "soft_budget_nanos": limit // 2}]
            self.publish_command(TEAM_1S, budgets=budgets)

    # -- faults -----------------------------------------------------------------------

    def kill_worker(self) -> None:
        assert self.worker is not None
        assert self.worker.running(), "the worker died by itself"
        self.worker.kill()
        self.worker = None
        self.worker_kills += 1

    def kill_api(self) -> None:
        assert self.api is not None
        assert self.api.process.running(), "the api died by itself"
        self.api.process.kill()
        self.api = None
        self.api_kills += 1

    def ensure_worker(self) -> None:
        if self.worker is None:
            self.worker = self.ledger.start_worker()

    def ensure_api(self) -> None:
        if self.api is None:
            self.api = self.ledger.start_api(self.store)


@pytest.mark.timeout(1_200)
def test_kills_lose_nothing_charge_nothing_twice_and_live_equals_the_replay(
    make_ledger: MakeLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figure = run_crash_test(make_ledger, tmp_path, chunks=100, worker_kills=5, api_kills=2)
    with capsys.disabled():
        print(f"\n{json.dumps(figure)}")


@pytest.mark.soak
@pytest.mark.timeout(7_200)
def test_soak_a_million_records_and_sixteen_kills(
    make_ledger: MakeLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figure = run_crash_test(
        make_ledger,
        tmp_path,
        chunks=500,
        worker_kills=12,
        api_kills=4,
        event_time_lead_s=SOAK_EVENT_TIME_LEAD_S,
        catch_up_timeout_s=SOAK_CATCH_UP_TIMEOUT_S,
    )
    with capsys.disabled():
        print(f"\n{json.dumps(figure)}")


def run_crash_test(
    make_ledger: MakeLedger,
    tmp_path: Path,
    *,
    chunks: int,
    worker_kills: int,
    api_kills: int,
    event_time_lead_s: float = EVENT_TIME_LEAD_S,
    catch_up_timeout_s: float = CATCH_UP_TIMEOUT_S,
) -> dict[str, Any]:
    """Publish ``chunks`` x 2,000 records while killing the worker and the api; check
    every invariant at the end and return the figures."""
    started = time.monotonic()
    seed = random.randrange(2**32)
    ledger = make_ledger(partitions=PARTITIONS)
    store = lake_at(tmp_path)
    schedule = random.Random(seed)
    # Kills of one process at least KILL_SPACING_CHUNKS apart: it is back (restarted at most
    # 3 chunks later) before its next kill is due.
    candidates = range(3, chunks - 5, KILL_SPACING_CHUNKS)
    worker_kill_at = dict.fromkeys(schedule.sample(candidates, worker_kills), "worker")
    api_kill_at = dict.fromkeys(schedule.sample(candidates, api_kills), "api")
    restart_after = {chunk: schedule.choice((0, 1, 2)) for chunk in [*worker_kill_at, *api_kill_at]}
    pending_restarts: dict[int, list[str]] = {}

    reads, stop_reading = tmp_path / "reads.jsonl", tmp_path / "stop-reading"
    reader_arguments = [store.catalog, store.data_path, str(reads), str(stop_reading), str(READ_EVERY_S)]
    reader = subprocess.Popen([sys.executable, "-c", READER, *reader_arguments, str(READER_SECONDS_MAX)])
    with (
        Producer(ledger.settings.kafka_bootstrap_servers) as producer,
        StateFollower(ledger.settings.kafka_bootstrap_servers, ledger.topics.budget_state, PARTITIONS) as live,
    ):
        crash = Crash(
            ledger,
            store,
            live,
            producer,
            seed,
            event_time_lead_s=event_time_lead_s,
            catch_up_timeout_s=catch_up_timeout_s,
        )
        per_event = 30_000
        crash.publish_command(
            TEAM_1S,
            budgets=[{"duration": "1s", "max_budget_nanos": per_event * 120, "soft_budget_nanos": per_event * 60}],
        )
        crash.publish_command(
            TEAM_1M,
            budgets=[{"duration": "1m", "max_budget_nanos": per_event * 6_000, "soft_budget_nanos": per_event * 3_000}],
        )
        crash.publish_command(
            KEY_BOTH,
            budgets=[
                {"duration": "1s", "max_budget_nanos": per_event * 200},
                {"duration": "1m", "max_budget_nanos": per_event * 10_000, "soft_budget_nanos": per_event * 5_000},
            ],
        )
        for chunk in range(chunks):
            for name in pending_restarts.pop(chunk, []):
                crash.ensure_worker() if name == "worker" else crash.ensure_api()
            if chunk and chunk % COMMAND_EVERY_CHUNKS == 0:
                crash.budgets(chunk // COMMAND_EVERY_CHUNKS)
            crash.publish_chunk()
            pause_s = CHUNK_EVERY_S * crash.rng.random()
            time.sleep(pause_s)
            for name in (worker_kill_at.get(chunk), api_kill_at.get(chunk)):
                if name == "worker" and crash.worker is not None:
                    crash.kill_worker()
                elif name == "api" and crash.api is not None:
                    crash.kill_api()
                else:
                    continue
                pending_restarts.setdefault(chunk + 1 + restart_after[chunk], []).append(name)
            time.sleep(CHUNK_EVERY_S - pause_s)
        crash.ensure_worker()
        crash.ensure_api()
        sent = crash.sent
        assert sent.records == chunks * RECORDS_PER_CHUNK
        assert (crash.worker_kills, crash.api_kills) == (worker_kills, api_kills)

        live.wait_for(
            GLOBAL_SCOPE, lambda s: s.state.entry_count >= len(sent.priced), "every event charged", catch_up_timeout_s
        )
        ledger.wait_idle(timeout_s=catch_up_timeout_s)
        time.sleep(1.0)  # the follower reads what the worker wrote before its last commit
        live_global = live.wait_for(GLOBAL_SCOPE, lambda s: True, "the global scope", 5).state

    expected_total = sum(cost_nanos(event) for event in sent.priced.values())
    assert (live_global.entry_count, live_global.total_spend_nanos) == (len(sent.priced), expected_total)

    assert crash.api is not None
    assert crash.api.process.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    ledger.project(store)  # what the api had not projected yet, from its stored offsets
    stop_reading.touch()
    try:
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
    connection = open_store(store, read_only=True)
    try:
        result, differences = asyncio.run(check_equality(ledger.settings, connection, genai_prices_book()))
        crossings = load_crossings(connection)
        ledger_rows = stored(connection, "SELECT event_id, cost_nanos FROM ledger_entries WHERE kind = 'charge'")
        events_stored = {row[0] for row in stored(connection, "SELECT event_id FROM usage_events")}
        letters = stored(connection, "SELECT reason, event_id, stage FROM dead_letters")
        alert_rows = stored(
            connection,
            "SELECT scope_key, limit_name, window_start, kind, threshold_nanos FROM budget_alerts",
        )
    finally:
        connection.close()

    # No loss, no double charge: each priced event has exactly one ledger entry at its price.
    charged_ids = [event_id for event_id, _ in ledger_rows]
    assert len(charged_ids) == len(set(charged_ids)) == len(sent.priced)
    assert set(charged_ids) == set(sent.priced)
    assert sum(cost for _, cost in ledger_rows) == expected_total
    # Every accepted event is in exactly one of ledger_entries and dead_letters.
    dead_ids = {event_id for _, event_id, _ in letters if event_id is not None}
    assert events_stored == set(sent.priced) | sent.unpriced
    assert not dead_ids & set(charged_ids)
    assert {event_id for reason, event_id, _ in letters if reason == "unpriced"} == sent.unpriced
    assert {event_id for reason, event_id, _ in letters if reason == "invalid_usage"} >= sent.invalid_in_batches
    refused = [letter for letter in letters if letter[0] != "unpriced"]
    assert len(refused) == sent.malformed + len(sent.invalid_in_batches), Counter(r[0] for r in refused)
    # Live equals the replay to the nano, and every crossing was alerted.
    assert differences == []
    assert (result.charged, result.unpriced) == (len(sent.priced), len(sent.unpriced))
    alerted = {row for row in alert_rows if row[3] in CROSSING_KINDS}
    replayed = {tuple(crossing) for crossing in crossings}
    assert replayed, "the budgets were never crossed: the test checks nothing"
    assert replayed == alerted, (sorted(replayed - alerted)[:5], sorted(alerted - replayed)[:5])
    # Alerts sent twice (a crash between sending and committing) are the same alert.
    topic_alerts = ledger.read_json(ledger.topics.budget_alerts)
    by_id: dict[str, set[tuple]] = {}
    for alert in topic_alerts:
        key = (alert["scope_key"], alert["limit_name"], alert["window_start"], alert["kind"], alert["threshold_nanos"])
        by_id.setdefault(alert["alert_id"], set()).add(key)
    assert all(len(keys) == 1 for keys in by_id.values())
    assert len(by_id) == len(alert_rows)
    read_count = check_reads(reads, dict(Counter(batch for (batch,) in stored_batches(store))))

    figure = {
        "test": "crash",
        "seed": seed,
        "records": sent.records,
        "priced": len(sent.priced),
        "duplicates": sent.duplicates,
        "malformed": sent.malformed + len(sent.invalid_in_batches),
        "unpriced": len(sent.unpriced),
        "budget_commands": sent.commands,
        "worker_sigkills": crash.worker_kills,
        "api_sigkills": crash.api_kills,
        "differences": len(differences),
        "crossings": len(replayed),
        "alerts_on_topic": len(topic_alerts),
        "alerts_sent_twice": len(topic_alerts) - len(by_id),
        "reads_while_projecting": read_count,
        "seconds": round(time.monotonic() - started, 1),
    }
    return figure


def stored(connection: duckdb.DuckDBPyConnection, query: str) -> list[tuple[Any, ...]]:
    return connection.execute(query).fetchall()


def stored_batches(store: StoreLocation) -> list[tuple[str]]:
    with open_store(store, read_only=True) as connection:
        return connection.execute("SELECT batch_id FROM ledger_entries").fetchall()


def check_reads(reads: Path, final_batches: dict[str, int]) -> int:
    """Every read of the reader: no error, counts and sums never shrink, and each batch it
    saw had all of its entries (as many as at the end). Returns how many reads it made."""
    lines = [json.loads(line) for line in reads.read_text().splitlines()]
    errors = [line["error"] for line in lines if "error" in line]
    assert not errors, errors[:3]
    assert len(lines) > 100, "the reader hardly read: the test checks nothing"
    counts = [line["count"] for line in lines]
    sums = [line["sum"] for line in lines]
    assert counts == sorted(counts)
    assert sums == sorted(sums)
    assert counts[-1] == sum(final_batches.values())
    partial = [
        (batch, seen, final_batches.get(batch))
        for line in lines
        for batch, seen in line["batches"].items()
        if seen != final_batches.get(batch)
    ]
    assert not partial, partial[:5]
    return len(lines)
