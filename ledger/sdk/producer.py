"""Publishing usage events from Python: straight to Kafka (``SpendLedgerProducer``), through
the api (``HttpUsagePublisher``), or from a script without asyncio (``SyncProducer``).

All three take ``UsageEvent`` objects or dicts in wire shape, validate every event before
anything is sent (``InvalidUsageEvent`` names the event and the field), and return once
every event is acknowledged. A failed send is retried with the same event ids, so the
worker's dedup charges each event once however often it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from ledger.client import (
    TIMEOUT_S_DEFAULT,
    AsyncLedgerClient,
    LedgerApiError,
    LedgerClientError,
    LedgerConnectionError,
    PublishFailed,
)
from ledger.client.calls import key_of
from ledger.domain.errors import InvalidUsage
from ledger.domain.events import BATCH_EVENTS_MAX, UsageEvent, with_received_time
from ledger.kafka import client_options
from ledger.publishing import BATCH_EVENTS_DEFAULT, usage_messages
from ledger.settings import Settings
from ledger.topics import topic_names

log = logging.getLogger(__name__)

UsageInput = UsageEvent | Mapping[str, Any]
T = TypeVar("T")

SEND_ATTEMPTS_MAX = 5  # sends of one message before its events are reported unconfirmed
RETRY_BACKOFF_S = 0.2  # before the second attempt; doubles per attempt
RETRY_BACKOFF_MAX_S = 5.0
PRODUCER_LINGER_MS = 5
PRODUCER_REQUEST_BYTES_MAX = 16 * 1024 * 1024  # a message is about 900 KB at most (publishing.py)
PRODUCER_REQUEST_TIMEOUT_MS = 10_000  # a send the broker does not acknowledge by then is retried
HTTP_RETRY_STATUSES = frozenset({502, 503, 504})  # the api or a proxy in front of it is not ready
SYNC_CALL_TIMEOUT_S = 300.0  # one SyncProducer call, retries included


class InvalidUsageEvent(InvalidUsage):
    """An event that does not validate as a ``UsageEvent``; nothing of the call was sent.
    ``index`` is its place in the call, ``field`` the first field in error (e.g.
    ``usage.prompt_tokens``), ``errors`` pydantic's list of every error."""

    def __init__(self, index: int, event_id: str | None, exc: ValidationError) -> None:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        which = f"event {index}" + (f" ({event_id!r})" if event_id else "")
        more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
        super().__init__(f"{which}: {first['msg']}{more}; nothing was published", field=field)
        self.index = index
        self.event_id = event_id
        self.errors = exc.errors()


class PublishUnconfirmed(Exception):
    """Some events were not acknowledged after every attempt (or a send failed for good).
    ``event_ids`` are those not confirmed, in order; publishing them again is harmless."""

    def __init__(self, event_ids: Sequence[str], attempts: int, cause: BaseException) -> None:
        shown = ", ".join(event_ids[:5]) + (f", ... ({len(event_ids)} in all)" if len(event_ids) > 5 else "")
        super().__init__(f"{len(event_ids)} events unconfirmed after {attempts} attempts ({cause!r}): {shown}")
        self.event_ids = list(event_ids)
        self.attempts = attempts
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Published:
    """Every event of a ``publish`` was acknowledged: their ids in order, in ``messages``
    Kafka messages (or api requests), after ``attempts`` rounds of sending."""

    event_ids: list[str]
    messages: int
    attempts: int


def validated_events(events: UsageInput | Iterable[UsageInput]) -> list[UsageEvent]:
    """Every event as a ``UsageEvent``; the first invalid one raises ``InvalidUsageEvent``.
    A dict without ``occurred_at`` occurred now, as over HTTP or on Kafka
    (``with_received_time``)."""
    items: Iterable[UsageInput] = [events] if isinstance(events, UsageEvent | Mapping) else events
    received_at = datetime.now(UTC)
    checked: list[UsageEvent] = []
    for index, item in enumerate(items):
        if isinstance(item, UsageEvent):
            checked.append(item)
            continue
        try:
            checked.append(UsageEvent.model_validate(with_received_time(dict(item), received_at)))
        except ValidationError as exc:
            event_id = item.get("event_id") if isinstance(item, Mapping) else None
            raise InvalidUsageEvent(index, event_id if isinstance(event_id, str) else None, exc) from exc
    return checked


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and exc.retriable)


def _backoff_s(attempt: int) -> float:
    return float(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), RETRY_BACKOFF_MAX_S))


@dataclass(frozen=True, slots=True)
class _Message:
    key: bytes
    value: bytes
    event_ids: list[str]


class SpendLedgerProducer:
    """Publishes usage events to the ``usage`` topic, packed as our producers do
    (``UsageBatch`` messages of up to ``batch_events_max`` events, keyed by batch id).

    ``await publish(...)`` returns once the broker acknowledged every message (acks=all).
    Not an idempotent or transactional Kafka producer (the embedded broker refuses
    InitProducerId): a retried message may land twice, which the worker's dedup by
    event_id makes harmless. Use ``async with SpendLedgerProducer() as producer``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        batch_events_max: int = BATCH_EVENTS_DEFAULT,
        linger_ms: int = PRODUCER_LINGER_MS,
        request_timeout_ms: int = PRODUCER_REQUEST_TIMEOUT_MS,
        attempts_max: int = SEND_ATTEMPTS_MAX,
    ) -> None:
        if attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        if not 1 <= batch_events_max <= BATCH_EVENTS_MAX:
            raise ValueError(f"batch_events_max must be within 1..{BATCH_EVENTS_MAX}")
        self.settings = settings if settings is not None else Settings()
        self.topic = topic_names(self.settings.topic_prefix).usage
        self.batch_events_max = batch_events_max
        self.attempts_max = attempts_max
        self._options: dict[str, Any] = {
            **client_options(self.settings),
            "acks": "all",
            "linger_ms": linger_ms,
            "max_request_size": PRODUCER_REQUEST_BYTES_MAX,
            "request_timeout_ms": request_timeout_ms,
        }
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the broker (``async with`` does this)."""
        if self._producer is None:
            producer = AIOKafkaProducer(**self._options)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer

    async def stop(self) -> None:
        """Send what is buffered and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self) -> None:
        """Wait until every buffered message was sent (``publish`` already waits for its own)."""
        if self._producer is not None:
            await self._producer.flush()

    async def publish(self, events: UsageInput | Iterable[UsageInput]) -> Published:
        """Publish one event or many; returns once the broker acknowledged all of them.
        Raises ``InvalidUsageEvent`` before sending anything, and ``PublishUnconfirmed``
        naming the event ids not acknowledged after ``attempts_max`` sends."""
        checked = validated_events(events)
        if self._producer is None:
            raise RuntimeError("the producer is not started: use `async with` or `await producer.start()`")
        wire = [event.model_dump(mode="json", exclude_defaults=True) for event in checked]
        messages = [
            _Message(key, value, _event_ids_of(value)) for key, value in usage_messages(wire, self.batch_events_max)
        ]
        pending = messages
        for attempt in range(1, self.attempts_max + 1):
            failures = await self._send(pending)
            if not failures:
                return Published([event_id for m in messages for event_id in m.event_ids], len(messages), attempt)
            pending = [message for message, _ in failures]
            cause = failures[0][1]
            fatal = next((exc for _, exc in failures if not _retriable(exc)), None)
            if fatal is not None or attempt == self.attempts_max:
                unconfirmed = [event_id for message in pending for event_id in message.event_ids]
                raise PublishUnconfirmed(unconfirmed, attempt, fatal or cause) from (fatal or cause)
            log.warning(
                "%d of %d messages not acknowledged (%r); sending them again (attempt %d of %d)",
                len(pending),
                len(messages),
                cause,
                attempt + 1,
                self.attempts_max,
            )
            await asyncio.sleep(_backoff_s(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, messages: list[_Message]) -> list[tuple[_Message, BaseException]]:
        """Send every message; the ones not acknowledged, with why."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("the producer is stopped")
        failures: list[tuple[_Message, BaseException]] = []
        sent: list[tuple[_Message, asyncio.Future[Any]]] = []
        for message in messages:
            try:
                sent.append((message, await producer.send(self.topic, message.value, key=message.key)))
            except KafkaError as exc:  # buffer full, no metadata, message too large
                failures.append((message, exc))
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for (message, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failures.append((message, result))
        return failures


def _event_ids_of(value: bytes) -> list[str]:
    """The event ids one ``usage_messages`` message carries (a ``UsageBatch`` or one event)."""
    decoded = orjson.loads(value)
    events = decoded.get("events", [decoded])
    return [str(event["event_id"]) for event in events]


class HttpUsagePublisher:
    """The same ``publish`` over the api's ``POST /v1/usage`` (``AsyncLedgerClient``), for
    services that reach the api but not the broker. A 502/503/504 answer or a connection
    error is retried with the same event ids: what the api had already accepted is skipped,
    and a request that did arrive but whose answer was lost is charged once all the same.
    ``key`` is the ingest or the master key."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        attempts_max: int = SEND_ATTEMPTS_MAX,
    ) -> None:
        if attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        self.attempts_max = attempts_max
        self._client = AsyncLedgerClient(base_url, key, timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Self:
        """A publisher to ``settings.api_url`` with the master key (else the ingest key)."""
        settings = settings if settings is not None else Settings()
        return cls(settings.api_url, key_of(settings))

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, events: UsageInput | Iterable[UsageInput]) -> Published:
        """See ``SpendLedgerProducer.publish``; ``messages`` counts the accepted requests."""
        remaining = validated_events(events)
        confirmed: list[str] = []
        requests = 0

        def accepted(count: int) -> None:
            nonlocal requests
            requests += 1

        for attempt in range(1, self.attempts_max + 1):
            try:
                result = await self._client.publish(remaining, on_request=accepted)
                return Published(confirmed + result.event_ids, requests, attempt)
            except PublishFailed as exc:
                confirmed.extend(exc.event_ids)
                remaining = remaining[exc.accepted :]
                cause: LedgerClientError = exc.cause
            except LedgerClientError as exc:
                cause = exc
            if not _http_retriable(cause) or attempt == self.attempts_max:
                raise PublishUnconfirmed([event.event_id for event in remaining], attempt, cause) from cause
            log.warning("the api did not accept %d events (%s); sending them again", len(remaining), cause)
            await asyncio.sleep(_backoff_s(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _http_retriable(exc: LedgerClientError) -> bool:
    if isinstance(exc, LedgerConnectionError):
        return True
    return isinstance(exc, LedgerApiError) and exc.status in HTTP_RETRY_STATUSES


class SyncProducer:
    """``SpendLedgerProducer`` for scripts and threads without asyncio.

    It runs one event loop in a daemon thread of its own for its whole life, so the Kafka
    connection is kept between calls (``asyncio.run`` per call would reconnect every time
    and cannot run inside a thread that already has a loop). Calls from several threads
    are safe: they are queued onto that loop. Use ``with SyncProducer() as producer``.
    """

    def __init__(
        self, settings: Settings | None = None, *, call_timeout_s: float = SYNC_CALL_TIMEOUT_S, **options: Any
    ) -> None:
        self.call_timeout_s = call_timeout_s
        self._producer = SpendLedgerProducer(settings, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="spend-ledger-producer", daemon=True)

    def start(self) -> None:
        """Start the loop thread and connect (``with`` does this)."""
        if not self._thread.is_alive():
            self._thread.start()
        try:
            self._call(self._producer.start())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Send what is buffered, disconnect and end the loop thread."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                self._call(self._producer.stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, events: UsageInput | Iterable[UsageInput]) -> Published:
        """See ``SpendLedgerProducer.publish``: blocks until every event is acknowledged."""
        return self._call(self._producer.publish(validated_events(events)))

    def flush(self) -> None:
        self._call(self._producer.flush())

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(self.call_timeout_s)
        except TimeoutError:
            future.cancel()
            raise


def publish_usage(events: UsageInput | Iterable[UsageInput], settings: Settings | None = None) -> Published:
    """Publish events once from a script: validate, connect, publish, wait for the broker,
    disconnect. For repeated calls keep a ``SyncProducer`` open instead."""
    checked = validated_events(events)
    with SyncProducer(settings) as producer:
        return producer.publish(checked)
