"""The DuckDB store filled by the real projector from the real broker and worker."""

from __future__ import annotations

import time
from pathlib import Path

from ledger.processes import ChildProcess
from ledger.publishing import usage_messages
from ledger.store.location import StoreLocation
from ledger.store.schema import StoreUnavailable, open_store
from tests.integration.builders import MakeLedger, charged, command, cost_nanos, has_limits, usage
from tests.stores import lake_at, store_env


def counts(store: StoreLocation) -> dict[str, int]:
    with open_store(store, read_only=True) as connection:
        tables = ("usage_events", "ledger_entries", "budget_commands", "budget_alerts", "price_books", "dead_letters")
        return {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}


def test_projector_stores_each_record_once_and_continues_from_its_offsets(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    ledger.publish_json(ledger.topics.budget_commands, [command("team:t", budgets=[{"max_budget_nanos": 1}])])
    ledger.snapshots(has_limits("team:t"))
    events = [usage(f"s-{n}", team="t", prompt=100 + n) for n in range(30)]
    unpriced = usage("s-unpriced", model="no-such-model-anywhere")
    invalid = {**usage("s-invalid"), "usage": {"prompt_tokens": -5}}
    copies = [(f"again-{n}", events[n]) for n in (0, 7, 29)]
    ledger.publish_json(
        ledger.topics.usage,
        [(e["event_id"], e) for e in events] + copies + [("s-unpriced", unpriced), ("s-invalid", invalid)],
    )
    ledger.snapshots(charged("team:t", 30))
    ledger.wait_idle()

    store = lake_at(tmp_path)
    first = ledger.project(store)
    assert counts(store) == {
        "usage_events": 31,  # 30 priced, 1 unpriced; the invalid one is a dead letter only
        "ledger_entries": 30,
        "budget_commands": 1,
        "budget_alerts": 1,  # team:t exceeded its one nano, once
        "price_books": 0,  # none published: the worker prices with the bundled book
        "dead_letters": 2,
    }
    assert first.rows["usage_events"] == 34  # the three copies were read, and dropped by event_id
    with open_store(store, read_only=True) as connection:
        spend = connection.execute("SELECT sum(cost_nanos) FROM ledger_entries").fetchone()[0]
        reasons = dict(connection.execute("SELECT event_id, reason FROM dead_letters").fetchall())
        stored = connection.execute("SELECT prompt_tokens, scope_keys FROM usage_events WHERE event_id = 's-7'")
        assert stored.fetchone() == (107, ["global:*", "user:u", "team:t"])
    assert spend == sum(cost_nanos(e) for e in events)
    assert reasons == {"s-unpriced": "unpriced", "s-invalid": "invalid_usage"}

    again = ledger.project(store)  # continues from its stored offsets: nothing to read
    assert again.messages == 0
    more = [usage(f"s-more-{n}", team="t") for n in range(3)]
    ledger.publish_json(ledger.topics.usage, [(e["event_id"], e) for e in more])
    ledger.snapshots(charged("team:t", 33))
    ledger.wait_idle()
    ledger.project(store)
    assert counts(store)["usage_events"] == 34
    assert counts(store)["ledger_entries"] == 33


def test_projector_killed_mid_batch_loses_and_repeats_nothing(make_ledger: MakeLedger, tmp_path: Path) -> None:
    ledger = make_ledger()
    events = [usage(f"k-{n}", user=f"user-{n % 50}", prompt=n % 1000) for n in range(60_000)]
    duplicates = [usage(f"k-{n}", user="someone-else") for n in range(0, 60_000, 97)]  # same ids again
    ledger.publish(ledger.topics.usage, list(usage_messages(events)) + list(usage_messages(duplicates, 100)))
    partial = 0
    delay_s = 2.0
    for attempt in range(10):  # kill until a kill lands in the middle (bounded)
        store = lake_at(tmp_path / f"attempt-{attempt}")  # a fresh store each time
        # Commits of half a MiB (two messages): a kill lands between two of some thirty.
        env = {**ledger.env, **store_env(store), "SPEND_LEDGER_STORE_BATCH_MIB": "0.5"}
        projector = ChildProcess.command(["project"], env, tmp_path / f"project-{attempt}.log").start()
        time.sleep(delay_s)
        projector.kill()
        try:
            partial = counts(store)["usage_events"]
        except StoreUnavailable:  # killed before it made its tables
            partial = 0
        if 0 < partial < len(events):
            break
        # Too early: nothing committed yet, wait longer. Too late: all stored, start over sooner.
        delay_s = delay_s / 2 if partial == len(events) else delay_s * 1.5
    assert 0 < partial < len(events), "no kill landed mid-way"

    finish = ChildProcess.command(["project", "--until-caught-up"], env, tmp_path / "project-final.log").start()
    assert finish.wait(timeout_s=120) == 0
    assert counts(store)["usage_events"] == len(events)
    with open_store(store, read_only=True) as connection:
        ids = connection.execute("SELECT count(DISTINCT event_id) FROM usage_events").fetchone()[0]
        offsets = dict(
            connection.execute(
                "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?", [ledger.topics.usage]
            ).fetchall()
        )
    assert ids == len(events)  # the copies under other keys were dropped by event_id
    published = len(list(usage_messages(events))) + len(list(usage_messages(duplicates, 100)))
    assert sum(offsets.values()) == published


def test_an_offset_the_log_no_longer_has_restarts_at_its_start_and_skips_nothing(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    first = [usage(f"o-{n}") for n in range(5)]
    ledger.publish_json(ledger.topics.usage, [(e["event_id"], e) for e in first])
    store = lake_at(tmp_path)
    ledger.project(store)
    with open_store(store) as connection:  # as after a new, empty broker: offsets past its end
        connection.execute("UPDATE consumer_offsets SET next_offset = next_offset + 1000")
    later = [usage(f"o-later-{n}") for n in range(3)]
    ledger.publish_json(ledger.topics.usage, [(e["event_id"], e) for e in later])
    ledger.project(store)
    assert counts(store)["usage_events"] == 8
    with open_store(store, read_only=True) as connection:  # each partition's stored offsets grew on
        (out_of_order,) = connection.execute(
            """
            SELECT count(*) FROM usage_events later
            WHERE later.event_id LIKE 'o-later-%' AND later.source_offset <= (
                SELECT max(first.source_offset) FROM usage_events first
                WHERE first.event_id NOT LIKE 'o-later-%' AND first.source_partition = later.source_partition)
            """
        ).fetchone()
    assert out_of_order == 0


def test_a_second_writer_is_refused_while_the_api_writes_and_takes_over_once_it_is_killed(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    store = lake_at(tmp_path)
    env = {**ledger.env, **store_env(store)}
    api = ledger.start_api(store)
    refused = ChildProcess.command(["project", "--until-caught-up"], env, tmp_path / "refused.log").start()
    assert refused.wait(timeout_s=60) == 2
    said = " ".join((tmp_path / "refused.log").read_text().split())
    assert "is written by another process (spend-ledger writer" in said
    assert f"pid {api.process.pid}): one writer per store" in said

    api.process.kill()  # its session ends with it, and the lock too
    took_over = ChildProcess.command(["project", "--until-caught-up"], env, tmp_path / "took-over.log").start()
    assert took_over.wait(timeout_s=60) == 0, (tmp_path / "took-over.log").read_text()
