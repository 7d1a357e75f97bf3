"""The api's store readers: a request reads one snapshot while the api's projector commits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson

from ledger.api.services import ApiServices
from tests.integration.builders import usage
from tests.integration.conftest import Ledger
from tests.integration.live_io import Producer
from tests.stores import lake_at, store_settings

STORED_WAIT_S = 30


def send_usage(ledger: Ledger, event_ids: list[str]) -> None:
    with Producer(ledger.settings.kafka_bootstrap_servers) as producer:
        producer.send(ledger.topics.usage, [(e.encode(), orjson.dumps(usage(e)), 0) for e in event_ids])


def stored(connection: duckdb.DuckDBPyConnection) -> int:
    return connection.execute("SELECT count(*) FROM usage_events").fetchall()[0][0]


async def fresh_count_reaches(services: ApiServices, count: int) -> None:
    deadline = time.monotonic() + STORED_WAIT_S
    while True:
        connection = services.reader()
        try:
            if stored(connection) == count:
                return
        finally:
            connection.close()
        assert time.monotonic() < deadline, f"the projector did not store {count} events"
        await asyncio.sleep(0.1)


def test_a_request_keeps_reading_the_snapshot_it_began_with_while_the_projector_commits(
    make_ledger: Callable[..., Ledger], tmp_path: Path
) -> None:
    ledger = make_ledger()
    settings = ledger.settings.model_copy(update={**store_settings(lake_at(tmp_path)), "data_dir": tmp_path / "data"})

    async def counts_seen() -> tuple[int, int]:
        services = ApiServices(settings)
        await services.start()
        try:
            send_usage(ledger, [f"first-{n}" for n in range(3)])
            await fresh_count_reaches(services, 3)
            request = services.reader()
            try:
                before = stored(request)
                send_usage(ledger, [f"second-{n}" for n in range(2)])
                await fresh_count_reaches(services, 5)  # committed, and seen by a new request
                return before, stored(request)
            finally:
                request.close()
        finally:
            await services.stop()

    assert asyncio.run(counts_seen()) == (3, 3)
