"""Packing usage events into Kafka messages the way our own producers do: a
``UsageBatch`` per message, keyed by its batch id (single events keyed by event_id)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from ledger.domain.events import BATCH_EVENTS_MAX, SCHEMA_VERSION

BATCH_EVENTS_DEFAULT = 1_000  # about 400 KB of JSON: under Kafka's default 1 MB message limit
BATCH_BYTES_TARGET = 900_000  # events with long texts fill a message before 1,000 of them do


def batch_id_of(event_ids: Iterable[str]) -> str:
    """A batch id derived from its events, so re-sending the same batch keeps its key."""
    digest = hashlib.sha256("\x1f".join(event_ids).encode()).hexdigest()[:32]
    return f"batch-{digest}"


def usage_messages(
    events: Sequence[dict[str, Any]], batch_events_max: int = BATCH_EVENTS_DEFAULT
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages carrying ``events`` (already in wire shape), at most
    ``batch_events_max`` and about ``BATCH_BYTES_TARGET`` bytes per message; a lone event
    goes as a plain ``UsageEvent``."""
    if not 1 <= batch_events_max <= BATCH_EVENTS_MAX:
        raise ValueError(f"batch_events_max must be within 1..{BATCH_EVENTS_MAX}")
    chunk: list[bytes] = []
    ids: list[str] = []
    size = 0
    for event in events:
        encoded = orjson.dumps(event)
        if chunk and (len(chunk) == batch_events_max or size + len(encoded) > BATCH_BYTES_TARGET):
            yield _message(chunk, ids)
            chunk, ids, size = [], [], 0
        chunk.append(encoded)
        ids.append(str(event["event_id"]))
        size += len(encoded) + 1
    if chunk:
        yield _message(chunk, ids)


def _message(chunk: list[bytes], ids: list[str]) -> tuple[bytes, bytes]:
    if len(chunk) == 1:
        return ids[0].encode(), chunk[0]
    batch_id = batch_id_of(ids)
    head = b'{"schema_version":%d,"batch_id":%s,"events":[' % (SCHEMA_VERSION, orjson.dumps(batch_id))
    return batch_id.encode(), head + b",".join(chunk) + b"]}"
