"""The store on a new log: a broker restarted on the same port keeps the topic names and
starts every log over at offset 0. The projector and the admission follower must tell it
from the log they read, read it from its start, and keep stored offsets growing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ledger.api.services import ApiServices
from ledger.broker import EmbeddedBroker, free_port
from ledger.domain.admission import AdmissionEvent
from ledger.domain.prices import PriceBook
from ledger.kafka import ensure_topics
from ledger.pricebooks.genai import genai_prices_book
from ledger.replay.service import current_book
from ledger.store.positions import NewLog, reconcile_log
from ledger.store.projector import ProjectorStats, input_topics
from ledger.store.schema import open_store
from ledger.store.writer import StoredPosition, stored_positions
from tests.integration.builders import usage
from tests.integration.conftest import Ledger
from tests.integration.live_io import Producer, Record
from tests.stores import lake_at, store_settings

ADMISSION_READY_TIMEOUT_S = 30.0


class RestartableBroker:
    """A broker of the test's own on a fixed port; ``restart`` stops it and starts a new
    one there: the same bootstrap address and topic names, every log new and empty."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.starts = 0
        self.running = self._start()

    def _start(self) -> EmbeddedBroker:
        self.starts += 1
        log = self.log_dir / f"tansu-{self.starts}.log"
        return EmbeddedBroker(port=self.port, log_path=log).start()

    def restart(self) -> None:
        self.running.stop()
        self.running = self._start()

    def stop(self) -> None:
        self.running.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    broker = RestartableBroker(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def ledger(own_broker: RestartableBroker, tmp_path: Path) -> Ledger:
    return Ledger(own_broker.running, tmp_path, partitions=2)


def restart(own_broker: RestartableBroker, ledger: Ledger) -> None:
    """A new log under the same names (as a restarted dev broker, or a restore, leaves it)."""
    own_broker.restart()
    asyncio.run(ensure_topics(ledger.settings))


def send(ledger: Ledger, topic: str, records: list[Record]) -> None:
    with Producer(ledger.settings.kafka_bootstrap_servers) as producer:
        producer.send(topic, records)


def send_usage(ledger: Ledger, partition: int, event_ids: list[str]) -> None:
    records: list[Record] = [(e.encode(), orjson.dumps(usage(e)), partition) for e in event_ids]
    send(ledger, ledger.topics.usage, records)


def book(name: str) -> PriceBook:
    return PriceBook(book_id="new-log-test", source=name)


def send_books(ledger: Ledger, books: list[PriceBook]) -> None:
    send(ledger, ledger.topics.prices, [(b"book", b.model_dump_json().encode(), 0) for b in books])


def reconcile(ledger: Ledger, store: Path) -> list[NewLog]:
    connection = open_store(store)
    try:
        return asyncio.run(reconcile_log(ledger.settings, connection, input_topics(ledger.topics)))
    finally:
        connection.close()


def project(ledger: Ledger, store: Path) -> ProjectorStats:
    return ledger.project(store)


def usage_offsets(store: Path) -> dict[str, tuple[int, int]]:
    """(source_partition, source_offset) per stored event id."""
    with open_store(store, read_only=True) as connection:
        rows = connection.execute("SELECT event_id, source_partition, source_offset FROM usage_events").fetchall()
    return {event_id: (partition, offset) for event_id, partition, offset in rows}


def positions(store: Path, topic: str) -> dict[int, StoredPosition]:
    connection = open_store(store)
    try:
        return {partition: found for (name, partition), found in stored_positions(connection).items() if name == topic}
    finally:
        connection.close()


def test_a_shorter_new_log_is_read_whole_and_its_offsets_continue_from_the_old_end(
    own_broker: RestartableBroker, ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = lake_at(tmp_path)
    send_usage(ledger, 0, [f"one-{n}" for n in range(6)])
    send_usage(ledger, 1, [f"one-p1-{n}" for n in range(3)])
    send_books(ledger, [book("one")])
    project(ledger, store)
    assert {p: found.next_offset for p, found in positions(store, ledger.topics.usage).items()} == {0: 6, 1: 3}

    restart(own_broker, ledger)
    send_usage(ledger, 0, ["one-0", "two-0"])  # a copy of a stored event (as a restore sends), a new one
    send_usage(ledger, 1, ["two-p1-0"])
    with caplog.at_level(logging.WARNING, logger="ledger.store.positions"):
        found = reconcile(ledger, store)
    assert {(new.topic, new.partition, new.old_next_offset, new.offset_base, new.reason) for new in found} == {
        (ledger.topics.usage, 0, 6, 6, "ends_before_position"),
        (ledger.topics.usage, 1, 3, 3, "ends_before_position"),
        (ledger.topics.prices, 0, 1, 1, "ends_before_position"),
    }
    said = [record.getMessage() for record in caplog.records if "a new log" in record.getMessage()]
    assert sorted(said) == sorted(  # one line per topic, however many partitions
        [
            f"{ledger.topics.usage} partitions 0,1 are a new log (the log ends before the stored position): read "
            "from the start; stored offsets continue after the old log's",
            f"{ledger.topics.prices} partition 0 is a new log (the log ends before the stored position): read "
            "from the start; stored offsets continue after the old log's",
        ]
    )
    stats = project(ledger, store)

    assert stats.messages == 3
    offsets = usage_offsets(store)
    assert len(offsets) == 9 + 2  # the copy of one-0 was read and dropped by its event id
    assert offsets["one-0"] == (0, 0)  # stored from the first log, not again
    assert offsets["two-0"] == (0, 6 + 1)
    assert offsets["two-p1-0"] == (1, 3 + 0)
    usage_positions = positions(store, ledger.topics.usage)
    assert {p: (found.next_offset, found.offset_base) for p, found in usage_positions.items()} == {
        0: (2, 6),
        1: (1, 3),
    }
    assert all(found.last_record is not None for found in usage_positions.values())
    assert reconcile(ledger, store) == []  # the store is on the new log now


def test_a_new_log_longer_than_the_stored_position_is_read_from_its_first_record(
    own_broker: RestartableBroker, ledger: Ledger, tmp_path: Path
) -> None:
    store = lake_at(tmp_path)
    send_usage(ledger, 0, [f"old-{n}" for n in range(3)])
    project(ledger, store)

    restart(own_broker, ledger)
    send_usage(ledger, 0, [f"new-{n}" for n in range(5)])  # past the stored position 3 before it reads
    stats = project(ledger, store)

    offsets = usage_offsets(store)
    assert sorted(event_id for event_id in offsets if event_id.startswith("new-")) == [f"new-{n}" for n in range(5)]
    assert stats.messages == 5
    assert [offsets[f"new-{n}"] for n in range(5)] == [(0, 3 + n) for n in range(5)]
    assert [offsets[f"old-{n}"] for n in range(3)] == [(0, n) for n in range(3)]
    assert positions(store, ledger.topics.usage)[0].next_offset == 5


def test_a_restart_on_the_same_log_reads_nothing_again_and_finds_no_new_log(ledger: Ledger, tmp_path: Path) -> None:
    store = lake_at(tmp_path)
    send_usage(ledger, 0, [f"same-{n}" for n in range(7)])  # one batch: the record checked is inside it
    send_usage(ledger, 1, [f"same-p1-{n}" for n in range(2)])
    send_books(ledger, [book("same")])
    assert project(ledger, store).messages == 10

    assert reconcile(ledger, store) == []
    assert project(ledger, store).messages == 0
    send_usage(ledger, 0, ["same-later"])
    assert project(ledger, store).messages == 1
    assert usage_offsets(store)["same-later"] == (0, 7)
    position = positions(store, ledger.topics.usage)[0]
    assert (position.next_offset, position.offset_base) == (8, 0)
    assert position.last_record is not None


def test_a_price_book_on_a_new_log_is_the_current_one_though_its_offset_is_lower(
    own_broker: RestartableBroker, ledger: Ledger, tmp_path: Path
) -> None:
    store = lake_at(tmp_path)
    send_books(ledger, [book(f"old-{n}") for n in range(5)])
    project(ledger, store)
    with open_store(store, read_only=True) as connection:
        assert current_book(connection, genai_prices_book).source == "old-4"

    restart(own_broker, ledger)
    send_books(ledger, [book("new")])  # offset 0 on the new log: below old-4's 4
    project(ledger, store)

    with open_store(store, read_only=True) as connection:
        assert current_book(connection, genai_prices_book).source == "new"
        stored = dict(connection.execute("SELECT source, source_offset FROM price_books").fetchall())
    assert stored == {**{f"old-{n}": n for n in range(5)}, "new": 5}


def held(request_id: str, now: datetime) -> Record:
    event = AdmissionEvent(
        request_id=request_id,
        state="held",
        at=now,
        instance_id="another-api",  # not this process's: it publishes nothing for these holds
        scope_keys=("global:*", "team:new-log"),
        model="gpt-4o-mini",
        rate_key="k",
        estimate_nanos=1_000,
        expires_at=now + timedelta(hours=1),
    )
    return (request_id.encode(), event.model_dump_json().encode(), 0)


def charges(event_id: str, offset: int) -> Record:
    """A ledger-entries batch as the worker writes it, charging ``event_id``."""
    entry = {
        "entry_id": f"entry-{event_id}",
        "event_id": event_id,
        "kind": "charge",
        "occurred_at": datetime.now(UTC).isoformat(),
        "model": "gpt-4o-mini",
        "scope_keys": ["global:*", "team:new-log"],
        "cost_nanos": 900,
        "cost_source": "price_book",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
    }
    batch = {"batch_id": f"usage-by-event/0/{offset}", "entries": [entry]}
    return (event_id.encode(), orjson.dumps(batch), 0)


def test_the_admission_follower_reads_a_new_log_from_its_first_record(
    own_broker: RestartableBroker, ledger: Ledger, tmp_path: Path
) -> None:
    store = lake_at(tmp_path)
    now = datetime.now(UTC)
    send(ledger, ledger.topics.admissions, [held(f"old-{n}", now) for n in range(3)])
    send(ledger, ledger.topics.ledger_entries, [charges(f"elsewhere-{n}", n) for n in range(3)])
    project(ledger, store)

    restart(own_broker, ledger)
    # Both past the stored positions (3) before the api starts; their first records matter.
    send(ledger, ledger.topics.ledger_entries, [charges("old-0", 0)] + [charges(f"later-{n}", n) for n in range(3)])
    send(ledger, ledger.topics.admissions, [held(f"new-{n}", now) for n in range(4)])

    async def open_holds_once_followed() -> set[str]:
        settings = ledger.settings.model_copy(update={**store_settings(store), "data_dir": tmp_path / "data"})
        services = ApiServices(settings)
        await services.start()
        try:
            await asyncio.wait_for(services.admission.ready.wait(), ADMISSION_READY_TIMEOUT_S)
            return {hold.request_id for hold in services.admission.book.open_holds()}
        finally:
            await services.stop()

    open_ids = asyncio.run(open_holds_once_followed())
    # old-0 was settled by the new log's first ledger-entries record; new-0.. are its first admissions.
    assert open_ids == {"old-1", "old-2", "new-0", "new-1", "new-2", "new-3"}
