"""Projector benchmark: topics into the store (a lake), on the embedded broker.

    python -m bench.projector [--events 300000] [--per-message 1000] [--stored 0]

Publishes N synthetic events (bench.live's generator) to ``usage`` in messages of
``--per-message`` events (1,000: as our SDK and api batch; 1: as one call's callback sends),
and their ledger entries to ``ledger-entries`` as the worker writes them. In the same run
a plain aiokafka consumer reads and JSON-decodes every message of both topics (the
baseline of the ratio); then the projector reads both into a fresh store until
caught up, validating each usage event as it stores it. The last line printed is JSON;
events_per_s counts usage events (each also arrives as a ledger entry).

``--stored N`` first fills the store (not timed) with N usage events received within the
dedup horizon, as a store holds after days of traffic: each new event is looked up among
them (``ledger.store.writer``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.live import publish, synthetic_events
from bench.replay import GENERATED_COLUMNS
from ledger.broker import EmbeddedBroker
from ledger.domain.events import UsageEvent
from ledger.domain.pricing import LedgerEntryBatch, price_event
from ledger.kafka import client_options, ensure_topics
from ledger.pricebooks.genai import genai_prices_book
from ledger.publishing import usage_messages
from ledger.settings import Settings
from ledger.store.location import store_location
from ledger.store.projector import Projector
from ledger.store.schema import open_store
from ledger.tokenizer import count_tokens
from ledger.topics import topic_names


def fill_horizon(connection: duckdb.DuckDBPyConnection, events: int) -> None:
    """``events`` stored usage events, received over the last six days (inside the horizon).
    Their ids look like the generated ones (a random prefix each), so the stored files span
    the ids' whole range, as random event ids do: no file is skipped by its bounds."""
    connection.execute(
        f"""
        INSERT INTO usage_events ({", ".join(GENERATED_COLUMNS)})
        SELECT 'p' || substr(md5(CAST(i AS VARCHAR)), 1, 6) || '-' || i,
               now() - to_microseconds(CAST(hash(i) % 518400000000 AS BIGINT)), 'gpt-4o-mini', NULL,
               'user-' || i % 1000, NULL, NULL, NULL, [], ['global:*', 'user:user-' || i % 1000],
               100, 20, 0, 0, 0, true, false, NULL, NULL, 0, i,
               now() - to_microseconds(CAST(hash(i) % 518400000000 AS BIGINT))
        FROM range({events}) t(i)
        """
    )


async def raw_consume(settings: Settings, topics: list[str], expected: int) -> float:
    """Seconds to read and JSON-decode ``expected`` messages from ``topics``."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=None, fetch_max_wait_ms=25, max_partition_fetch_bytes=16 * 1024 * 1024
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started, read = time.perf_counter(), 0
        while read < expected:
            for records in (await consumer.getmany(timeout_ms=200, max_records=256)).values():
                for record in records:
                    orjson.loads(record.value)
                read += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--per-message", type=int, default=1_000, help="usage events per message")
    parser.add_argument("--stored", type=int, default=0, help="usage events already stored within the horizon")
    args = parser.parse_args()
    book = genai_prices_book()
    events = synthetic_events(args.events, seed=7, id_prefix=f"p{uuid.uuid4().hex[:6]}")
    usage = list(usage_messages(events, args.per_message))
    entries = []
    for start in range(0, len(events), args.per_message):
        priced = [price_event(UsageEvent.model_validate(e), book) for e in events[start : start + args.per_message]]
        batch_id = f"bench/{start}"
        entries.append((batch_id.encode(), LedgerEntryBatch.encode(batch_id, priced)))

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="bench-projector-") as folder:
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix="bench.")
        names = topic_names(settings.topic_prefix)
        asyncio.run(ensure_topics(settings))
        asyncio.run(publish(settings, names.usage, usage))
        asyncio.run(publish(settings, names.ledger_entries, entries))
        # The generated events are published: freed, so that neither reader's garbage
        # collections walk 300,000 dicts that no service process would hold.
        messages = len(usage) + len(entries)
        del events, usage, entries
        gc.collect()
        raw_s = asyncio.run(raw_consume(settings, [names.usage, names.ledger_entries], messages))

        os.chmod(folder, 0o755)  # the catalog server may run as another user (ledger.store.catalog_server)
        with store_location(Settings(store_path=Path(folder) / "store")) as store:
            connection = open_store(store)
            fill_horizon(connection, args.stored)
            started = time.perf_counter()
            stats = asyncio.run(Projector(settings, connection, count_tokens).run(until_caught_up=True))
            project_s = time.perf_counter() - started
            connection.close()
            with open_store(store, read_only=True) as check:
                stored = check.execute(
                    "SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM ledger_entries)"
                )
                usage_rows, entry_rows = stored.fetchone() or (0, 0)
    assert (usage_rows, entry_rows) == (args.events + args.stored, args.events), (usage_rows, entry_rows)
    print(
        json.dumps(
            {
                "events": args.events,
                "per_message": args.per_message,
                "stored_before": args.stored,
                "projector_s": round(project_s, 2),
                "events_per_s": round(args.events / project_s),
                "raw_consume_events_per_s": round(args.events / raw_s),
                "ratio": round(raw_s / project_s, 3),
                "messages": stats.messages,
                "usage_rows": usage_rows,
                "entry_rows": entry_rows,
            }
        )
    )


if __name__ == "__main__":
    main()
