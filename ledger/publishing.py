"""Packing usage events into Kafka messages the way our own producers do: a
``UsageBatch`` per message, keyed by its batch id (single events keyed by event_id)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from ledger.domain.events import BATCH_EVENTS_MAX, SCHEMA_VERSION

BATCH_EVENTS_DEFAULT = 1_000  # about 400 KB of JSON: under Kafka's default 1 MB message limit


def batch_id_of(event_ids: Iterable[str]) -> str:
    """A batch id derived from its events, so re-sending the same batch keeps its key."""
    digest = hashlib.sha256("\x1f".join(event_ids).encode()).hexdigest()[:32]
    return f"batch-{digest}"


def usage_messages(
    events: Sequence[dict[str, Any]], batch_events_max: int = BATCH_EVENTS_DEFAULT
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages carrying ``events`` (already in wire shape), at most
    ``batch_events_max`` per message; a lone event goes as a plain ``UsageEvent``."""
    if not 1 <= batch_events_max <= BATCH_EVENTS_MAX:
        raise ValueError(f"batch_events_max must be within 1..{BATCH_EVENTS_MAX}")
    for start in range(0, len(events), batch_events_max):
        chunk = events[start : start + batch_events_max]
        if len(chunk) == 1:
            yield str(chunk[0]["event_id"]).encode(), orjson.dumps(chunk[0])
            continue
        batch_id = batch_id_of(str(event["event_id"]) for event in chunk)
        body = {"schema_version": SCHEMA_VERSION, "batch_id": batch_id, "events": list(chunk)}
        yield batch_id.encode(), orjson.dumps(body)
