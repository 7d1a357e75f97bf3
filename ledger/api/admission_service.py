"""Admission in the api process: the book of holds, kept current from the topics.

Each api instance keeps an ``AdmissionBook`` in memory and answers ``POST /v1/admit`` from
it. It follows three topics with a consumer of its own:

- ``admissions``: every instance's holds and their ends (this instance's read back too);
- ``ledger-entries``: a charge whose event id has an open hold settles it;
- ``rate-limits`` (compacted, from its start): model capacities, the priority
  reservation, key priorities.

At start the book is loaded from the store (the open holds as of the projector's last
commit), and the first two topics are followed from the projector's stored positions, so
a restarted api has every hold back and misses no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ledger.api.state import BudgetStateCache
from ledger.domain.admission import AdmissionBook, AdmissionEvent, Hold, SettledCharge, charge_source
from ledger.domain.prices import PriceBook
from ledger.domain.rate_shares import RateBook, RateLimitRecord
from ledger.kafka import client_options, end_offsets, reached, records_behind
from ledger.pricebooks.genai import genai_prices_book
from ledger.replay.service import current_book
from ledger.settings import Settings
from ledger.store.location import data_path_of
from ledger.store.writer import stored_offsets
from ledger.topics import topic_names

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100
# Another instance's holds reach this one within about this wait plus a round trip: the
# over-admission bound across instances grows with it (README, "Admission").
FETCH_MAX_WAIT_MS = 25
FETCH_RECORDS_MAX = 5_000
SWEEP_EVERY_S = 0.25
PRICES_REFRESH_EVERY_S = 10.0
FORGET_EVERY_S = 60.0
# Another instance's hold is expired here this long after its time, if that instance
# (which expires its own on time) has not: it may be gone.
EXPIRY_GRACE = timedelta(seconds=5)

Publish = Callable[[str, bytes, bytes], Awaitable[None]]


def default_instance_id(settings: Settings) -> str:
    """The host and a digest of where the store keeps its data: the same for a restarted api."""
    digest = hashlib.sha256(data_path_of(settings).encode()).hexdigest()[:12]
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:100] or "host"
    return f"{host}-{digest}"


class AdmissionService:
    """The book, its loading, following and sweeping; the routes call ``book`` directly."""

    def __init__(self, settings: Settings, budget_state: BudgetStateCache, publish: Publish) -> None:
        self.settings = settings
        self.names = topic_names(settings.topic_prefix)
        self.budget_state = budget_state
        self.instance_id = settings.api_instance_id or default_instance_id(settings)
        rates = RateBook(settings.priority_reservation, settings.admission_saturation)
        self.book = AdmissionBook(self.instance_id, settings.admission_ttl_s, rates)
        self.price_book: PriceBook | None = None
        self.ready = asyncio.Event()
        self.lag_records = 0
        self.changed = asyncio.Condition()  # notified when a rate-limits record is applied
        self._publish = publish
        self._start_offsets: dict[tuple[str, int], int] = {}
        self._to_publish: list[AdmissionEvent] = []
        self._sending: set[asyncio.Task[None]] = set()
        # Records this process published, by request id: the follower reads them back
        # and skips them unparsed (the book applied them when they were made).
        self._echoes: dict[str, list[bytes]] = {}
        self.publish_failures = 0

    # -- loading ---------------------------------------------------------------------------

    def load(self, connection: duckdb.DuckDBPyConnection, now: datetime) -> None:
        """Rebuild the book from the store, before the projector moves its positions:
        every hold that may still be open, ended as the store says, and the current
        price book. After ``reconcile_log``, so the positions followed from are on the
        broker's current log."""
        self._start_offsets = stored_offsets(connection)
        since = now - self.book.ttl - EXPIRY_GRACE
        rows = connection.execute(
            """
            SELECT event FROM admission_events
            WHERE request_id IN (SELECT request_id FROM admission_events WHERE state = 'held' AND expires_at > ?)
            ORDER BY request_id, state = 'held' DESC
            """,
            [since],
        ).fetchall()
        for (text,) in rows:
            self.book.follow(AdmissionEvent.model_validate_json(text), self.budget_state.snapshot, now)
        open_ids = [hold.request_id for hold in self.book.open_holds()]
        if open_ids:
            charged = connection.execute(
                "SELECT DISTINCT event_id FROM ledger_entries WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [open_ids],
            ).fetchall()
            for (event_id,) in charged:  # charged before the api stopped: its state has it
                hold = self.book.end(event_id, "settled", now)
                if hold is not None and hold.instance_id == self.instance_id:
                    self._to_publish.append(hold.event("settled", now, self.instance_id))
        self.price_book = current_book(connection, genai_prices_book)
        log.info("admission: %d open holds loaded", len(self.book.open_holds()))

    # -- following -------------------------------------------------------------------------

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow ``admissions``, ``ledger-entries`` and ``rate-limits`` until ``stop``."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        await consumer.start()
        try:
            await consumer.topics()
            topics = (self.names.admissions, self.names.ledger_entries, self.names.rate_limits)
            partitions = [
                TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(partitions)
            targets = await end_offsets(self.settings, partitions)
            for tp in partitions:
                position = (
                    None if tp.topic == self.names.rate_limits else self._start_offsets.get((tp.topic, tp.partition))
                )
                if position is None or position > targets[tp]:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, position)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS_MAX)
                if batches:
                    self._take(batches)
                if not self.ready.is_set() and await reached(consumer, targets):
                    self.ready.set()
                    log.info("admission: following from the topics, %d holds open", len(self.book.open_holds()))
                self.lag_records = await records_behind(consumer)
        finally:
            await consumer.stop()

    def _take(self, batches: dict[TopicPartition, list[object]]) -> None:
        now = datetime.now(UTC)
        limits_changed = False
        for tp, records in batches.items():
            for record in records:
                key: bytes | None = record.key  # type: ignore[attr-defined]
                value: bytes | None = record.value  # type: ignore[attr-defined]
                try:
                    if tp.topic == self.names.admissions and value is not None:
                        if self._is_echo(key, value):
                            continue
                        self.book.follow(AdmissionEvent.model_validate_json(value), self.budget_state.snapshot, now)
                    elif tp.topic == self.names.ledger_entries and value is not None:
                        self._settle_from(value, now)
                    elif tp.topic == self.names.rate_limits:
                        limits_changed = True
                        if value is None:
                            self.book.rates.forget((key or b"").decode())
                        else:
                            self.book.rates.configure(RateLimitRecord.model_validate_json(value))
                except (ValidationError, ValueError, KeyError, TypeError) as exc:  # not written by the ledger
                    log.warning("admission: skipped %s@%d: %r", tp, record.offset, exc)  # type: ignore[attr-defined]
        if limits_changed:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _settle_from(self, value: bytes, now: datetime) -> None:
        """Settle the holds a ledger-entries message charges (read only when a hold is
        open or a model has a capacity: otherwise nothing here needs it)."""
        if not self.book.holds and not self.book.rates.capacities:
            return
        batch = orjson.loads(value)
        source = charge_source(str(batch.get("batch_id", "")))
        if source is None:
            return
        for entry in batch.get("entries", ()):
            if entry.get("kind", "charge") != "charge":
                continue
            usage = entry.get("usage") or {}
            charge = SettledCharge(
                event_id=entry["event_id"],
                scope_keys=tuple(entry["scope_keys"]),
                model=entry["model"],
                cost_nanos=int(entry["cost_nanos"]),
                tokens=int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
                occurred_at=datetime.fromisoformat(entry["occurred_at"]),
                source=source[0],
                offset=source[1],
            )
            hold = self.book.settle(charge, self.budget_state.snapshot, now)
            if hold is not None and hold.instance_id == self.instance_id:
                self._to_publish.append(
                    hold.event("settled", now, self.instance_id, cost_nanos=charge.cost_nanos, tokens=charge.tokens)
                )

    # -- sweeping --------------------------------------------------------------------------

    async def sweep(self, stop: asyncio.Event, reader: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        """Expire holds on time, stop holding charges the state now shows, publish what
        ended, refresh the price book."""
        prices_at = time.monotonic() + PRICES_REFRESH_EVERY_S
        forget_at = time.monotonic() + FORGET_EVERY_S
        while not stop.is_set():
            now = datetime.now(UTC)
            for hold in self.book.due(now, EXPIRY_GRACE):
                self.book.end(hold.request_id, "expired", now)
                self._to_publish.append(hold.event("expired", now, self.instance_id))
            self.book.drain_all(self.budget_state.snapshot)
            if self.book.stop_waiting(now):
                log.warning("admission: settled charges not in the budget state by their hold's expiry; no longer held")
            if self._to_publish:
                pending, self._to_publish = self._to_publish, []
                await asyncio.gather(*(self._publish_or_requeue(event) for event in pending))
            if time.monotonic() >= forget_at:
                self.book.forget_closed(now)
                forget_at = time.monotonic() + FORGET_EVERY_S
            if time.monotonic() >= prices_at:
                self.price_book = await asyncio.to_thread(_current_book, reader)
                prices_at = time.monotonic() + PRICES_REFRESH_EVERY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_EVERY_S)

    async def publish_event(self, event: AdmissionEvent) -> None:
        value = event.model_dump_json().encode()
        self._echoes.setdefault(event.request_id, []).append(value)
        try:
            await self._publish(self.names.admissions, event.request_id.encode(), value)
        except BaseException:
            self._forget_echo(event.request_id, value)
            raise

    def _is_echo(self, key: bytes | None, value: bytes) -> bool:
        """A record this process published (and so already applied)."""
        if key is None:
            return False
        request_id = key.decode(errors="replace")
        sent = self._echoes.get(request_id)
        if not sent or value not in sent:
            return False
        self._forget_echo(request_id, value)
        return True

    def _forget_echo(self, request_id: str, value: bytes) -> None:
        sent = self._echoes.get(request_id)
        if sent is not None and value in sent:
            sent.remove(value)
            if not sent:
                del self._echoes[request_id]

    def publish_hold(self, hold: Hold) -> None:
        """Publish a hold's ``held`` record without waiting for the broker: an admit is
        answered from memory at once. A record the broker refuses is sent again by the
        sweep until it takes it (the hold counts here meanwhile)."""
        task = asyncio.get_running_loop().create_task(
            self._publish_or_requeue(hold.event("held", hold.held_at, self.instance_id))
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish_or_requeue(self, event: AdmissionEvent) -> None:
        try:
            await self.publish_event(event)
        except KafkaError as exc:
            self.publish_failures += 1
            self._to_publish.append(event)
            log.warning("admission: %s record of %s not published, retrying: %r", event.state, event.request_id, exc)


def _current_book(reader: Callable[[], duckdb.DuckDBPyConnection]) -> PriceBook:
    connection = reader()
    try:
        return current_book(connection, genai_prices_book)
    finally:
        connection.close()
