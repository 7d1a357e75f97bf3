"""Two workers in one consumer group over 8 partitions: when one stops (SIGTERM, or
SIGKILL), the other takes its partitions and their state, charges every event once, and
the live state still equals the replay of the store."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from ledger.domain.scopes import GLOBAL_SCOPE
from ledger.publishing import usage_messages
from tests.integration.builders import MakeLedger, cost_nanos, name_routed_to, until, usage
from tests.integration.live_io import Producer, StateFollower, assigned_partitions
from tests.stores import lake_at

PARTITIONS = 8
STEADY_EVENTS_PER_S = 400
HANDOVER_TIMEOUT_S = 120.0


class SteadyTraffic:
    """Publishes usage events at a steady rate from a thread until stopped; remembers them."""

    def __init__(self, producer: Producer, topic: str, run_id: str) -> None:
        self.producer = producer
        self.topic = topic
        self.run_id = run_id
        self.events: list[dict] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-traffic", daemon=True)

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(30)

    def _run(self) -> None:
        tick_s = 0.1
        per_tick = int(STEADY_EVENTS_PER_S * tick_s)
        for tick in itertools.count():
            if self._stopping.is_set():
                return
            events = [
                usage(f"{self.run_id}-steady-{tick}-{n}", user=f"user-{n % 40}", team=f"team-{n % 9}", prompt=10 + n)
                for n in range(per_tick)
            ]
            self.producer.send(self.topic, [(key, value, None) for key, value in usage_messages(events, 10)])
            self.events.extend(events)
            time.sleep(tick_s)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_worker_hands_its_partitions_and_state_to_the_other(
    make_ledger: MakeLedger, tmp_path: Path, stop_signal: signal.Signals, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = make_ledger(partitions=PARTITIONS)
    leaving, staying = ledger.start_worker(), ledger.start_worker()
    logs = [tmp_path / f"worker-{ledger.prefix}{n}.log" for n in range(2)]
    usage_topic = ledger.topics.usage

    def owned() -> list[set[int]]:
        return [assigned_partitions(log, usage_topic) for log in logs]

    shares = until(owned, lambda found: all(found) and set.union(*found) == set(range(PARTITIONS)), "both workers")
    assert not shares[0] & shares[1], shares

    run_id = f"rb{stop_signal}"
    with (
        Producer(ledger.settings.kafka_bootstrap_servers) as producer,
        StateFollower(ledger.settings.kafka_bootstrap_servers, ledger.topics.budget_state, PARTITIONS) as live,
    ):
        before = [usage(f"{run_id}-before-{n}", user=f"user-{n % 40}", team=f"team-{n % 9}") for n in range(4_000)]
        producer.send(usage_topic, [(key, value, None) for key, value in usage_messages(before, 100)])
        live.wait_for(GLOBAL_SCOPE, lambda s: s.state.entry_count >= len(before), "the first events", 120)

        with SteadyTraffic(producer, usage_topic, run_id) as steady:
            time.sleep(1.0)
            stopped_at = time.monotonic()
            os.kill(leaving.pid or 0, stop_signal)
            # One probe per partition, each with a scope of its own owned by that partition:
            # the handover is over once the survivor has folded all of them.
            probes = []
            for partition in range(PARTITIONS):
                probe = usage(
                    name_routed_to(partition, f"{run_id}-probe-event", PARTITIONS),
                    user=name_routed_to(partition, f"{run_id}-probe-user", PARTITIONS, "user:{}"),
                )
                probes.append(probe)
                producer.send(usage_topic, [(None, orjson.dumps(probe), partition)])
            probe_scopes = [f"user:{probe['user_id']}" for probe in probes]
            for scope in probe_scopes:
                live.wait_for(scope, lambda s: s.state.entry_count == 1, f"the probe of {scope}", HANDOVER_TIMEOUT_S)
            handover_s = max(live.first_seen(scope) or 0.0 for scope in probe_scopes) - stopped_at
            time.sleep(2.0)  # more traffic after the handover
        exit_code = leaving.stop()
        assert exit_code == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)
        assert owned()[1] == set(range(PARTITIONS))
        assert staying.running()

        events = before + steady.events + probes
        assert len({event["event_id"] for event in events}) == len(events)
        total = sum(cost_nanos(event) for event in events)
        live.wait_for(GLOBAL_SCOPE, lambda s: s.state.entry_count >= len(events), "every event", HANDOVER_TIMEOUT_S)
        ledger.wait_idle()
        time.sleep(0.5)  # the follower reads what the worker wrote before its last commit
        state = live.wait_for(GLOBAL_SCOPE, lambda s: True, "the global scope", 5).state
        assert (state.entry_count, state.total_spend_nanos) == (len(events), total)
        for team in range(9):
            mine = [event for event in events if event.get("team_id") == f"team-{team}"]
            team_state = live.snapshot(f"team:team-{team}")
            assert team_state is not None
            assert team_state.state.total_spend_nanos == sum(cost_nanos(event) for event in mine)

    store = lake_at(tmp_path)
    result, differences = ledger.replay_equality(store)
    assert differences == []
    assert result.charged == len(events)
    figure = {"test": "rebalance", "signal": stop_signal.name, "handover_s": round(handover_s, 2)}
    figure |= {"partitions": PARTITIONS, "events": len(events), "differences": len(differences)}
    with capsys.disabled():
        print(f"\n{json.dumps(figure)}")
