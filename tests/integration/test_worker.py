"""The live pipeline against the real embedded broker and real worker processes:
dedup, pricing, dead letters, budget alerts, window roll-over, restarts."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from ledger.domain.budgets import BudgetSpec, alert_message
from ledger.domain.snapshots import BudgetSnapshot
from ledger.domain.windows import epoch_us
from ledger.store.schema import open_store
from streams.codec import partition_of
from tests.integration.builders import MakeLedger, alerts_of, charged, command, cost_nanos, has_limits, usage
from tests.stores import lake_at


def test_second_event_exceeds_team_budget_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    # LiteLLM's team walkthrough: max_budget 0.000000001 USD, i.e. one nano.
    ledger.publish_json(ledger.topics.budget_commands, [command("team:tiny", budgets=[{"max_budget_nanos": 1}])])
    ledger.snapshots(has_limits("team:tiny"))

    first = usage("tiny-1", team="tiny", prompt=0, completion=0)  # costs nothing: within budget
    ledger.publish_json(ledger.topics.usage, [("tiny-1", first)])
    states = ledger.snapshots(charged("team:tiny", 1))
    assert states["team:tiny"].state.limits[0].spend_nanos == 0

    second = usage("tiny-2", team="tiny")
    third = usage("tiny-3", team="tiny")
    ledger.publish_json(ledger.topics.usage, [("tiny-2", second)])
    alerts = ledger.read_json(
        ledger.topics.budget_alerts, lambda found: bool(alerts_of(found, "team:tiny", "exceeded"))
    )
    ledger.publish_json(ledger.topics.usage, [("tiny-3", third)])
    ledger.snapshots(charged("team:tiny", 3))
    ledger.wait_idle()
    alerts = ledger.read_json(ledger.topics.budget_alerts)

    exceeded = alerts_of(alerts, "team:tiny", "exceeded")
    assert len(exceeded) == 1
    assert exceeded[0]["trigger_id"] == "tiny-2"
    expected = alert_message("exceeded", cost_nanos(second), BudgetSpec(max_budget_nanos=1))
    assert exceeded[0]["message"] == expected
    assert expected == "Budget has been exceeded! Current cost: 0.000027, Max budget: 0.000000001"


def test_same_event_id_under_three_keys_is_charged_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    event = usage("dup-1", user="dup-user")
    ledger.publish_json(ledger.topics.usage, [(key, event) for key in ("k1", "k2", "k3")])
    # Sentinels routed to the same dedup partition, one per key, published after the
    # copies: once all three are charged, every copy has been through dedup.
    owner = partition_of(b"dup-1", 4)
    sentinel_ids = [i for i in (f"sentinel-{n}" for n in range(200)) if partition_of(i.encode(), 4) == owner][:3]
    ledger.publish_json(
        ledger.topics.usage,
        [
            (key, usage(sentinel, user="sentinel"))
            for key, sentinel in zip(("k1", "k2", "k3"), sentinel_ids, strict=True)
        ],
    )
    ledger.snapshots(charged("user:sentinel", 3))
    ledger.wait_idle()
    states = ledger.snapshots(charged("user:sentinel", 3))

    assert states["user:dup-user"].state.entry_count == 1
    assert states["user:dup-user"].state.total_spend_nanos == cost_nanos(event)
    assert states["global:*"].state.entry_count == 4


def test_bad_records_land_in_dead_letter_and_the_worker_goes_on(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    negative = usage("neg-1", user="bad")
    negative["usage"]["prompt_tokens"] = -5
    bad = {
        b"malformed": b'{"event_id": "mal-1", "model": ',
        b"version": orjson.dumps({**usage("ver-1", user="bad"), "schema_version": 2}),
        b"negative": orjson.dumps(negative),
        b"unknown": orjson.dumps(usage("unk-1", user="bad", model="no-such-model-anywhere")),
    }
    ledger.publish(ledger.topics.usage, list(bad.items()))
    ledger.publish_json(ledger.topics.usage, [("after", usage("after-1", user="good"))])

    letters = ledger.read_json(ledger.topics.dead_letter, lambda found: len(found) >= 4)
    by_key = {base64.b64decode(letter["original_key_b64"]): letter for letter in letters}
    assert {key: (by_key[key]["stage"], by_key[key]["reason"]) for key in bad} == {
        b"malformed": ("decode", "malformed_json"),
        b"version": ("decode", "unsupported_schema_version"),
        b"negative": ("validate", "invalid_usage"),
        b"unknown": ("price", "unpriced"),
    }
    for key, original in bad.items():
        assert base64.b64decode(by_key[key]["original_value_b64"]) == original
        assert by_key[key]["detail"]
    assert "usage.prompt_tokens" in by_key[b"negative"]["detail"]
    assert "no-such-model-anywhere" in by_key[b"unknown"]["detail"]

    states = ledger.snapshots(charged("user:good", 1))
    assert "user:bad" not in states  # nothing bad was charged, not even $0


def test_one_second_budget_resets_without_traffic(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    ledger.publish_json(
        ledger.topics.budget_commands,
        [command("team:roll", budgets=[{"max_budget_nanos": 1, "duration": "1s"}])],
    )
    ledger.snapshots(has_limits("team:roll"))
    # Two seconds ahead, so the charge lands in a window that is still open when folded.
    ahead = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    ledger.publish_json(ledger.topics.usage, [("roll-1", usage("roll-1", team="roll", occurred_at=ahead))])

    alerts = ledger.read_json(ledger.topics.budget_alerts, lambda found: bool(alerts_of(found, "team:roll", "reset")))
    exceeded = alerts_of(alerts, "team:roll", "exceeded")
    reset = alerts_of(alerts, "team:roll", "reset")
    assert len(exceeded) == 1
    assert reset[0]["window_start"] == exceeded[0]["window_start"]  # the window that was exceeded closed
    assert reset[0]["trigger_id"] == "window-end"
    recovered = ledger.read_json(
        ledger.topics.budget_alerts, lambda found: bool(alerts_of(found, "team:roll", "recovered"))
    )
    assert alerts_of(recovered, "team:roll", "recovered")[0]["trigger_id"] == "window-end"


def test_reset_command_and_raised_limit_emit_recovered(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    ledger.publish_json(
        ledger.topics.budget_commands,
        [
            command("team:reset-me", budgets=[{"max_budget_nanos": 1}]),
            command("team:raise-me", budgets=[{"max_budget_nanos": 1}]),
        ],
    )
    ledger.snapshots(lambda states: has_limits("team:reset-me")(states) and has_limits("team:raise-me")(states))
    ledger.publish_json(
        ledger.topics.usage,
        [("r-1", usage("r-1", team="reset-me")), ("r-2", usage("r-2", team="raise-me"))],
    )
    ledger.read_json(
        ledger.topics.budget_alerts,
        lambda found: bool(
            alerts_of(found, "team:reset-me", "exceeded") and alerts_of(found, "team:raise-me", "exceeded")
        ),
    )

    reset = command("team:reset-me", action="reset")
    raise_limit = command("team:raise-me", budgets=[{"max_budget_nanos": 1_000_000_000}])
    ledger.publish_json(ledger.topics.budget_commands, [reset, raise_limit])
    alerts = ledger.read_json(
        ledger.topics.budget_alerts,
        lambda found: bool(
            alerts_of(found, "team:reset-me", "recovered") and alerts_of(found, "team:raise-me", "recovered")
        ),
    )
    assert alerts_of(alerts, "team:reset-me", "reset")[0]["trigger_id"] == reset[1]["command_id"]
    assert alerts_of(alerts, "team:reset-me", "recovered")[0]["trigger_id"] == reset[1]["command_id"]
    assert alerts_of(alerts, "team:raise-me", "recovered")[0]["trigger_id"] == raise_limit[1]["command_id"]
    assert alerts_of(alerts, "team:raise-me", "reset") == []  # a raised limit keeps its window
    ledger.wait_idle()
    states = ledger.snapshots(lambda states: "team:reset-me" in states)
    assert not states["team:reset-me"].state.exceeded
    assert states["team:reset-me"].state.limits[0].spend_nanos == 0
    assert states["team:raise-me"].state.limits[0].spend_nanos == cost_nanos(usage("r-2", team="raise-me"))


def test_state_continues_from_the_changelogs_after_restarts(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    worker = ledger.start_worker()
    unique: dict[str, dict] = {}

    def publish(start: int, count: int, duplicates: list[str]) -> None:
        events = [usage(f"r-{n}", user=f"user-{n % 7}", prompt=50 + n) for n in range(start, start + count)]
        unique.update((event["event_id"], event) for event in events)
        batch = {"batch_id": f"batch-{start}", "events": events[: count // 2]}
        singles = [(event["event_id"], event) for event in events[count // 2 :]]
        copies = [(f"again-{event_id}", unique[event_id]) for event_id in duplicates]
        ledger.publish_json(ledger.topics.usage, [(batch["batch_id"], batch), *singles, *copies])

    def totals(count: int) -> dict[str, BudgetSnapshot]:
        return ledger.snapshots(charged("global:*", count))

    publish(0, 100, [])
    totals(100)
    assert worker.stop() == 0  # SIGTERM: a clean stop

    worker = ledger.start_worker()
    publish(100, 60, ["r-3", "r-50", "r-99"])
    totals(160)
    worker.kill()  # SIGKILL: a crash, no shutdown code runs

    ledger.start_worker()
    publish(160, 40, ["r-120", "r-4"])
    totals(200)
    ledger.wait_idle()
    states = totals(200)

    assert states["global:*"].state.entry_count == 200
    assert states["global:*"].state.total_spend_nanos == sum(cost_nanos(event) for event in unique.values())
    for n in range(7):
        mine = [event for event in unique.values() if event["user_id"] == f"user-{n}"]
        assert states[f"user:user-{n}"].state.total_spend_nanos == sum(cost_nanos(event) for event in mine)


def test_events_without_occurred_at_on_kafka_occur_at_their_records_timestamp(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    ledger.start_worker()
    sent_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000  # a minute ago, to the millisecond
    timeless = {key: value for key, value in usage("timeless-1", user="timeless").items() if key != "occurred_at"}
    timed = usage("timed-1", user="timeless")
    batch = {"batch_id": "timeless-batch", "events": [timed, {**timeless, "event_id": "timeless-2"}]}

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=ledger.settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for key, value in ((b"timeless-1", timeless), (b"timeless-batch", batch)):
                await producer.send_and_wait(ledger.topics.usage, orjson.dumps(value), key=key, timestamp_ms=sent_ms)
        finally:
            await producer.stop()

    asyncio.run(send())
    ledger.snapshots(charged("user:timeless", 3))
    ledger.wait_idle()
    entries = {
        entry["event_id"]: entry
        for batch in ledger.read_json(ledger.topics.ledger_entries)
        for entry in batch["entries"]
    }
    record_time = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=sent_ms)
    assert datetime.fromisoformat(entries["timeless-1"]["occurred_at"]) == record_time
    assert datetime.fromisoformat(entries["timeless-2"]["occurred_at"]) == record_time
    assert datetime.fromisoformat(entries["timed-1"]["occurred_at"]) == datetime.fromisoformat(timed["occurred_at"])
    assert ledger.read_json(ledger.topics.dead_letter) == []

    # The store says which times were the record's, and its replay agrees with live state.
    store = lake_at(tmp_path)
    _, differences = ledger.replay_equality(store)
    assert differences == []
    with open_store(store, read_only=True) as connection:
        rows = connection.execute(
            "SELECT event_id, epoch_us(occurred_at), occurred_at_source FROM usage_events ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("timed-1", epoch_us(datetime.fromisoformat(timed["occurred_at"])), "event"),
        ("timeless-1", sent_ms * 1000, "received"),
        ("timeless-2", sent_ms * 1000, "received"),
    ]
