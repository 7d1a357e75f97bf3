"""The Faust app: topics, tables and agents of the live pipeline (DESIGN sections 2, 3, 5, 6).

Three hops, each owning what it must see whole:

1. ``route_usage`` reads ``usage`` (any key, one event or a ``UsageBatch`` per message),
   refuses what cannot be decoded, and routes each event by its event_id to
   ``internal.usage-by-event``: every copy of an event_id meets the same dedup index.
2. ``price_usage`` drops duplicates, prices the new events, writes one ``ledger-entries``
   message per input message and routes each scope's charge by scope key to
   ``internal.scope-charges``. ``route_commands`` routes ``budget-commands`` there too.
3. ``fold_scopes`` folds charges and commands into each scope's ``BudgetSnapshot`` (the
   ``budget`` table, whose changelog is the compacted ``budget-state`` topic), and sends
   alerts. A timer rolls windows over when no usage arrives.

A restore (``streams.restore``) writes into both internal topics: event ids for the dedup
index of the partition that owns them, and each scope's state for the fold to put in place.

Delivery is at least once. Re-delivered input is harmless: the dedup index treats a
message it has seen as new only for that same message (its outputs are rebuilt the same),
and each snapshot records the last input offset per source (``ledger.domain.snapshots``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import faust
import faust.transport.drivers.aiokafka
import orjson
from faust.types import EventT, StreamT, TableT
from pydantic import ValidationError

from ledger.domain.adjustments import LedgerAdjustment, adjustment_entry
from ledger.domain.budgets import BudgetCommand, BudgetState
from ledger.domain.dedup import DedupIndex
from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import UsageEvent
from ledger.domain.fold import Alerts, Charge
from ledger.domain.prices import PriceBook
from ledger.domain.pricing import LedgerEntry, LedgerEntryBatch, price_event
from ledger.domain.snapshots import BudgetSnapshot, ScopeInput, empty_snapshot, fold_inputs, fold_tick, next_window_end
from ledger.domain.wire import (
    Rejected,
    dead_letter,
    dedup_id,
    field_errors,
    record_time,
    split_usage_message,
    validate_input,
)
from ledger.settings import Settings
from ledger.topics import internal_topic_names, topic_names
from streams.codec import (
    ChargeRow,
    Source,
    charge_row,
    decode_restored_ids,
    decode_routed,
    decode_scope_record,
    encode_charges,
    encode_command,
    encode_routed,
    partition_of,
)
from streams.faust_kafka import CommitGuard, adapt_faust_consumer, faust_broker_urls, faust_credentials
from streams.gaps import GapFiller
from streams.outputs import StepOutputs
from streams.prices import PriceFollower

log = logging.getLogger(__name__)

ROUTED_BYTES_MAX = 900_000  # under Kafka's default 1 MB message limit
DEDUP_EXPIRY_EVERY_S = 60.0
TAIL_CHECK_EVERY_S = 2.0
# usage and usage-by-event messages are batches of up to ~1 MB (usage up to 8 MiB); a step
# holds its messages in memory, so these hops take fewer at a time (500 held ~230 MB more).
BIG_MESSAGES_PER_STEP_MAX = 64


class LedgerWorker:
    """The worker's app, topics, tables and in-memory indexes, built from settings."""

    def __init__(self, settings: Settings, default_book: Callable[[], PriceBook], count_tokens: Callable[[str], int]):
        adapt_faust_consumer(settings)
        names = topic_names(settings.topic_prefix)
        internal = internal_topic_names(settings.topic_prefix)
        self.commit_guard = CommitGuard({names.usage, names.budget_commands, *internal.all()})
        self.commit_guard.install()
        self.gaps = GapFiller(settings, group_id=f"{settings.topic_prefix}worker")
        self._step_of: dict[str, Callable[[list[Any], StepOutputs], None]] = {}
        self._step_locks: dict[str, asyncio.Lock] = {}
        self._stepped_at: dict[str, float] = {}
        self.settings = settings
        self.partitions = settings.topic_partitions
        self.count_tokens = count_tokens
        self.names = names
        self.app = faust.App(
            f"{settings.topic_prefix}worker",
            broker=faust_broker_urls(settings.kafka_bootstrap_servers),
            broker_credentials=faust_credentials(settings),
            store="memory://",
            # Faust keeps per-app files here (tables are in memory); not the working directory.
            datadir=str(settings.data_dir / "worker"),
            web_enabled=False,
            topic_partitions=self.partitions,
            topic_replication_factor=settings.topic_replication_factor,
            broker_session_timeout=settings.kafka_session_timeout_s,
            broker_heartbeat_interval=settings.kafka_heartbeat_interval_s,
            producer_max_request_size=16 * 1024 * 1024,
            producer_linger_ms=2,
            producer_max_batch_size=1024 * 1024,
            consumer_max_fetch_size=16 * 1024 * 1024,
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=settings.worker_standby_replicas,
            processing_guarantee="exactly_once" if settings.worker_exactly_once else "at_least_once",
        )

        def raw_topic(name: str, **options: Any) -> faust.TopicT:
            return self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **options
            )

        self.usage_topic = raw_topic(names.usage)
        self.commands_topic = raw_topic(names.budget_commands)
        self.routed_topic = raw_topic(internal.usage_by_event, internal=True, partitions=self.partitions)
        self.scope_topic = raw_topic(internal.scope_charges, internal=True, partitions=self.partitions)
        self.entries_topic = raw_topic(names.ledger_entries)
        self.alerts_topic = raw_topic(names.budget_alerts)
        self.dead_letter_topic = raw_topic(names.dead_letter)
        budget_state = raw_topic(names.budget_state, partitions=self.partitions, compacting=True, deleting=False)

        # Both tables are written by _write_table, not table[key] = value: once per step for
        # every changed key, by the window timer outside any stream iteration too, each
        # record to the partition that owns its key. The dedup log (one record per input
        # message, key "partition:offset") lives in its input's partition; a budget snapshot
        # in partition_of(scope key), where every hop routes that scope's input.
        self.dedup_table = self.app.Table("dedup", key_type=bytes, value_type=bytes, partitions=self.partitions)
        self.budget_table = self.app.Table(
            "budget", key_type=bytes, value_type=bytes, partitions=self.partitions, changelog_topic=budget_state
        )

        self.prices = PriceFollower(settings, names.prices, default_book)
        self._dedup: dict[int, DedupIndex] = {}
        self._dedup_expired_at: dict[int, float] = {}
        self._snapshots: dict[str, BudgetSnapshot] = {}
        self._window_ends: list[tuple[datetime, str]] = []
        self._rescan_windows = True

        self.budget_table.on_recover(self._on_recovered)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.task(self._follow_prices)
        self.app.timer(settings.window_tick_s)(self._tick)
        self.app.timer(TAIL_CHECK_EVERY_S)(self._fill_tails)
        self.app.agent(self.usage_topic, name="route-usage")(self._route_usage)
        self.app.agent(self.commands_topic, name="route-commands")(self._route_commands)
        self.app.agent(self.routed_topic, name="price-usage")(self._price_usage)
        self.app.agent(self.scope_topic, name="fold-scopes")(self._fold_scopes)

    # -- rebalancing: in-memory indexes follow the partitions this worker owns --------

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.commit_guard.reset()
        self.gaps.reset()
        self._dedup.clear()
        self._snapshots.clear()
        self._window_ends.clear()

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self._rescan_windows = True

    async def _on_recovered(self) -> None:
        self._rescan_windows = True

    async def _follow_prices(self) -> None:
        await self.prices.follow()

    # -- hop 1: decode and route by event_id -----------------------------------------

    async def _steps(
        self,
        stream: StreamT[bytes],
        step: Callable[[list[EventT[bytes]], StepOutputs], None],
        messages_max: int | None = None,
    ) -> AsyncIterator[None]:
        """Run ``step`` on each batch of messages, send its outputs, then ack the batch.

        ``noack_take``, not ``take``: ``take`` acks its batch when the generator closes, so
        a worker stopped (SIGTERM) in the middle of a step committed input whose outputs
        were never sent (a test lost an event that way). Here an unfinished step is not
        acked, and its input is read again.
        """
        settings = self.settings
        topic = stream.channel.get_topic_name()  # type: ignore[attr-defined]  # a topic's stream
        self._step_of[topic] = step
        batches = stream.noack_take(  # type: ignore[attr-defined]  # missing from StreamT
            messages_max or settings.worker_batch_messages_max, settings.worker_batch_within_s
        )
        async for events in batches:
            await self._run_step(topic, list(events))
            for event in events:
                await stream.ack(event)
            yield None

    async def _run_step(self, topic: str, events: list[Any]) -> None:
        """Complete the events (no repeats, no gaps), run the topic's step, hand over its
        outputs; one step at a time per topic, so a partition's outputs keep its order."""
        async with self._step_locks.setdefault(topic, asyncio.Lock()):
            complete = await self.gaps.complete(events)
            if not complete:
                return
            outputs = self._outputs()
            self._step_of[topic](complete, outputs)
            await outputs.send()
            for event in complete:
                self.commit_guard.finished(event.message.topic, event.message.partition, event.message.offset)
            self._stepped_at[topic] = time.monotonic()

    async def _fill_tails(self) -> None:
        """Process what Faust left undelivered at the end of an idle partition (a gap is
        only seen when a later message arrives, so the last one needs this check)."""
        # Only topics whose agent is idle: under load, undelivered records are just queued.
        idle_since = time.monotonic() - TAIL_CHECK_EVERY_S
        idle = {topic for topic in self._step_of if self._stepped_at.get(topic, 0.0) < idle_since}
        owned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in idle]
        for (topic, _), records in (await self.gaps.stalled_tails(owned)).items():
            await self._run_step(topic, records)

    async def _route_usage(self, stream: StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in self._steps(stream, self._route_step, BIG_MESSAGES_PER_STEP_MAX):
            yield None

    def _route_step(self, events: list[EventT[bytes]], outputs: StepOutputs) -> None:
        groups: dict[int, _RoutedGroup] = {}
        for event in events:
            message = event.message
            source = Source(message.topic, message.partition, message.offset, message.key, _ms(message.timestamp))
            value = message.value if isinstance(message.value, bytes) else b""
            raw_events, rejected = split_usage_message(value)
            for refused in rejected:
                self._dead_letter(outputs, refused, source)
            for raw_event in raw_events:
                body = raw_event.original if raw_event.original is not None else orjson.dumps(raw_event.raw)
                record_id = dedup_id(raw_event.raw)
                route_key = record_id.encode() if record_id is not None else body
                target = partition_of(route_key, self.partitions)
                group = groups.get(target)
                if group is None or group.size + len(body) > ROUTED_BYTES_MAX:
                    if group is not None:
                        self._send_routed(outputs, target, group)
                    group = groups[target] = _RoutedGroup()
                group.add(source, body)
        for target, group in groups.items():
            self._send_routed(outputs, target, group)

    def _send_routed(self, outputs: StepOutputs, target: int, group: _RoutedGroup) -> None:
        outputs.add(self.routed_topic.get_topic_name(), target, None, encode_routed(group.sources, group.events))

    # -- hop 2: dedup, price, write entries, route charges by scope ------------------

    async def _price_usage(self, stream: StreamT[bytes]) -> AsyncIterator[None]:
        await self.prices.ready.wait()
        async for _ in self._steps(stream, self._price_step, BIG_MESSAGES_PER_STEP_MAX):
            yield None

    def _price_step(self, events: list[EventT[bytes]], outputs: StepOutputs) -> None:
        for event in events:
            self._price_message(event, outputs)

    def _price_message(self, event: EventT[bytes], outputs: StepOutputs) -> None:
        message = event.message
        partition, offset = message.partition, message.offset
        dedup = self._dedup_index(partition)
        restored = decode_restored_ids(message.value or b"")
        if restored is not None:
            self._restore_ids(outputs, partition, offset, dedup, *restored)
            return
        sources, items = decode_routed(message.value or b"")
        received = [record_time(source.timestamp_ms) for source in sources]  # once per source, not per event
        checked: list[tuple[UsageEvent | LedgerAdjustment, Source, bytes]] = []
        for source_index, body in items:
            source = sources[source_index]
            try:
                raw = orjson.loads(body)
            except orjson.JSONDecodeError as exc:  # hop 1 sent only objects; a bug if reached
                self._dead_letter(outputs, Rejected(body, "decode", "malformed_json", str(exc)), source)
                continue
            usage = validate_input(raw, original=body, received_at=received[source_index])
            if isinstance(usage, Rejected):
                self._dead_letter(outputs, usage, source)
            else:
                checked.append((usage, source, body))
        verdicts = dedup.admit(offset, [_record_id(usage) for usage, _, _ in checked])
        fresh = [item for item, new in zip(checked, verdicts, strict=True) if new]

        book = self.prices.book
        entries: list[LedgerEntry] = []
        charges: dict[int, list[ChargeRow]] = {}
        for usage, source, body in fresh:
            if isinstance(usage, LedgerAdjustment):
                entry = adjustment_entry(usage)
            else:
                try:
                    entry = price_event(
                        usage,
                        book,
                        count_tokens=self.count_tokens,
                        trust_reported_cost=self.settings.trust_reported_cost,
                    )
                except UnpricedModel as exc:
                    self._dead_letter(outputs, Rejected(body, "price", "unpriced", str(exc), usage.event_id), source)
                    continue
                except InvalidUsage as exc:
                    rejected = Rejected(body, "price", "invalid_usage", str(exc), usage.event_id)
                    self._dead_letter(outputs, rejected, source)
                    continue
            entries.append(entry)
            charge = Charge(entry.entry_id, entry.occurred_at, entry.model, entry.cost_nanos)
            occurred_at_iso = entry.occurred_at.isoformat()
            scopes_by_owner: dict[int, list[str]] = {}
            for scope in entry.scope_keys:
                scopes_by_owner.setdefault(self._owner(scope), []).append(scope)
            for owner, scopes in scopes_by_owner.items():
                charges.setdefault(owner, []).append(charge_row(charge, occurred_at_iso, scopes))

        accepted = [_record_id(usage) for usage, _, _ in fresh]
        if dedup.record(offset, accepted, time.time()):
            log_record = orjson.dumps({"at": time.time(), "ids": accepted})
            self._write_table(outputs, self.dedup_table, partition, f"{partition}:{offset}".encode(), log_record)
        batch_id = f"{message.topic}/{partition}/{offset}"
        if entries:
            value = LedgerEntryBatch.encode(batch_id, entries)
            outputs.add(self.entries_topic.get_topic_name(), partition, batch_id.encode(), value)
        for owner, rows in charges.items():
            value = encode_charges(f"u{partition}", offset, rows)
            outputs.add(self.scope_topic.get_topic_name(), owner, batch_id.encode(), value)
        self._expire_dedup(outputs, partition, dedup)

    def _restore_ids(
        self, outputs: StepOutputs, partition: int, offset: int, dedup: DedupIndex, ids: list[str], seen_at_s: float
    ) -> None:
        """Event ids a restore put back (``spend-ledger restore``): later copies of them
        are duplicates, as if their messages were still in the log."""
        if dedup.record(offset, ids, seen_at_s):
            log_record = orjson.dumps({"at": seen_at_s, "ids": ids})
            self._write_table(outputs, self.dedup_table, partition, f"{partition}:{offset}".encode(), log_record)

    def _dedup_index(self, partition: int) -> DedupIndex:
        """This partition's index, rebuilt from the dedup table the first time after an
        assignment (the table holds what the changelog restored)."""
        index = self._dedup.get(partition)
        if index is not None:
            return index
        index = self._dedup[partition] = DedupIndex()
        prefix = f"{partition}:".encode()
        logged = []
        for key, value in self.dedup_table.items():
            if key.startswith(prefix):
                record = orjson.loads(value)
                logged.append((int(key[len(prefix) :]), record["ids"], record["at"]))
        for offset, ids, seen_at in sorted(logged):
            index.record(offset, ids, seen_at)
        self._dedup_expired_at[partition] = time.monotonic()
        return index

    def _expire_dedup(self, outputs: StepOutputs, partition: int, dedup: DedupIndex) -> None:
        if time.monotonic() - self._dedup_expired_at.get(partition, 0.0) < DEDUP_EXPIRY_EVERY_S:
            return
        self._dedup_expired_at[partition] = time.monotonic()
        for offset in dedup.expire(time.time(), self.settings.dedup_horizon_s):
            self._write_table(outputs, self.dedup_table, partition, f"{partition}:{offset}".encode(), None)

    def _owner(self, scope: str) -> int:
        """The partition that owns a scope's budget (0.4 us: not worth a cache's memory)."""
        return partition_of(scope.encode(), self.partitions)

    # -- budget commands: validate, route by scope ----------------------------------

    async def _route_commands(self, stream: StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in self._steps(stream, self._route_commands_step):
            yield None

    def _route_commands_step(self, events: list[EventT[bytes]], outputs: StepOutputs) -> None:
        for event in events:
            message = event.message
            source = Source(message.topic, message.partition, message.offset, message.key)
            value = message.value if isinstance(message.value, bytes) else b""
            try:
                command = BudgetCommand.model_validate_json(value)
            except ValidationError as exc:
                self._dead_letter(outputs, Rejected(value, "validate", "invalid_command", field_errors(exc)), source)
                continue
            record = encode_command(f"c{message.partition}", message.offset, command.model_dump_json().encode())
            owner = self._owner(command.scope_key)
            outputs.add(self.scope_topic.get_topic_name(), owner, command.scope_key.encode(), record)

    # -- hop 3: fold into budget snapshots -------------------------------------------

    async def _fold_scopes(self, stream: StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in self._steps(stream, self._fold_step):
            yield None

    def _fold_step(self, events: list[EventT[bytes]], outputs: StepOutputs) -> None:
        inputs: dict[str, list[ScopeInput]] = {}
        for event in events:
            record = decode_scope_record(event.message.value or b"")
            if record.command is not None:
                command = BudgetCommand.model_validate(record.command)
                inputs.setdefault(command.scope_key, []).append(
                    ScopeInput(record.source, record.offset, command=command)
                )
            if record.restore is not None:
                restored = BudgetState.model_validate(record.restore)
                inputs.setdefault(restored.scope_key, []).append(
                    ScopeInput(record.source, record.offset, restore=restored)
                )
            for scope, scope_charges in record.charges.items():
                inputs.setdefault(scope, []).append(
                    ScopeInput(record.source, record.offset, charges=tuple(scope_charges))
                )
        for scope, scope_inputs in inputs.items():
            before = self._snapshot(scope)
            after, alerts = fold_inputs(before, scope_inputs)
            if after is not before:
                self._store(outputs, scope, after, before)
            self._send_alerts(outputs, scope, alerts)

    def _snapshot(self, scope: str) -> BudgetSnapshot:
        snapshot = self._snapshots.get(scope)
        if snapshot is None:
            stored = self.budget_table.data.get(scope.encode())  # the store itself: no default machinery
            snapshot = empty_snapshot(scope) if stored is None else BudgetSnapshot.model_validate_json(stored)
            self._snapshots[scope] = snapshot
        return snapshot

    def _store(self, outputs: StepOutputs, scope: str, snapshot: BudgetSnapshot, before: BudgetSnapshot) -> None:
        self._snapshots[scope] = snapshot
        value = snapshot.model_dump_json().encode()
        self._write_table(outputs, self.budget_table, self._owner(scope), scope.encode(), value)
        ends = next_window_end(snapshot)
        if ends is not None and ends != next_window_end(before):
            heapq.heappush(self._window_ends, (ends, scope))

    async def _tick(self) -> None:
        """Roll over windows that ended, so budgets reset with no new usage."""
        if self._rescan_windows:
            self._rescan_windows = False
            self._scan_window_ends()
        now = datetime.now(UTC)
        outputs = self._outputs()
        while self._window_ends and self._window_ends[0][0] <= now:
            _, scope = heapq.heappop(self._window_ends)
            before = self._snapshots.get(scope)
            if before is None:
                continue
            after, alerts = fold_tick(before, now)
            if after is not before:
                self._store(outputs, scope, after, before)
                self._send_alerts(outputs, scope, alerts)
        while self.prices.rejected:
            letter = self.prices.rejected.pop(0)
            outputs.add(self.dead_letter_topic.get_topic_name(), 0, None, letter.model_dump_json().encode())
        await outputs.send()

    def _scan_window_ends(self) -> None:
        """After an assignment: load every owned scope whose windows end, for the timer."""
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.scope_topic.get_topic_name()}
        for key, value in list(self.budget_table.items()):
            scope = key.decode()
            if b'"window_end":"' not in value or self._owner(scope) not in owned:
                continue
            snapshot = self._snapshot(scope)
            ends = next_window_end(snapshot)
            if ends is not None:
                heapq.heappush(self._window_ends, (ends, scope))

    # -- dead letters ----------------------------------------------------------------

    def _dead_letter(self, outputs: StepOutputs, rejected: Rejected, source: Source) -> None:
        record = dead_letter(
            rejected, topic=source.topic, key=source.key, partition=source.partition, offset=source.offset
        )
        partition = partition_of(source.key or b"", self.partitions)
        outputs.add(self.dead_letter_topic.get_topic_name(), partition, source.key, record.model_dump_json().encode())

    # -- outputs ---------------------------------------------------------------------

    def _outputs(self) -> StepOutputs:
        return StepOutputs(self.app.producer._ensure_producer)  # type: ignore[attr-defined]  # the aiokafka driver

    def _send_alerts(self, outputs: StepOutputs, scope: str, alerts: Alerts) -> None:
        topic, partition = self.alerts_topic.get_topic_name(), self._owner(scope)
        for alert in alerts:
            outputs.add(topic, partition, scope.encode(), alert.model_dump_json().encode())

    @staticmethod
    def _write_table(
        outputs: StepOutputs, table: TableT[bytes, bytes], partition: int, key: bytes, value: bytes | None
    ) -> None:
        """Set (or with None, delete) a table key: the local store, and its changelog record
        in this step's outputs (see streams.outputs for why not ``table[key] = value``)."""
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        outputs.add(table.changelog_topic.get_topic_name(), partition, key, value)


def _record_id(record: UsageEvent | LedgerAdjustment) -> str:
    return record.adjustment_id if isinstance(record, LedgerAdjustment) else record.event_id


class _RoutedGroup:
    """Events bound for one ``usage-by-event`` partition, with their sources."""

    __slots__ = ("events", "size", "source_index", "sources")

    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.source_index: dict[Source, int] = {}
        self.events: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, source: Source, body: bytes) -> None:
        index = self.source_index.get(source)
        if index is None:
            index = self.source_index[source] = len(self.sources)
            self.sources.append(source)
        self.events.append((index, body))
        self.size += len(body) + 8


def _ms(timestamp_s: float | None) -> int | None:
    """A record's timestamp in milliseconds from Faust's seconds (the milliseconds divided
    by 1000, which rounding gives back exactly)."""
    return None if timestamp_s is None else round(timestamp_s * 1000)
