"""The projector compacts the lake on its schedule (ledger.store.maintenance) while a
reader keeps summing: files merge, old snapshots go, and no read ever sees another sum."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from ledger.store.location import StoreLocation
from ledger.store.projector import Projector
from ledger.store.schema import open_store
from ledger.tokenizer import count_tokens
from tests.integration.builders import MakeLedger, usage
from tests.stores import lake_at

COMMITS = 15
PROJECT_SECONDS = 4.0
LIVE_FILES = "SELECT count(*) FROM __ducklake_metadata_lake.ducklake_data_file WHERE end_snapshot IS NULL"


def sums_until(store: StoreLocation, stop: threading.Event, sums: list[int]) -> None:
    """Sum the ledger's usage tokens in one fresh snapshot after another until ``stop``."""
    with open_store(store, read_only=True) as connection:
        while not stop.is_set():
            connection.commit()
            connection.begin()
            (total,) = connection.execute("SELECT sum(prompt_tokens) FROM usage_events").fetchone() or (0,)
            sums.append(int(total))
            stop.wait(0.05)


def test_the_projector_compacts_the_lake_on_schedule_while_a_reader_sums(
    make_ledger: MakeLedger, tmp_path: Path
) -> None:
    ledger = make_ledger()
    store = lake_at(tmp_path)
    for commit in range(COMMITS):  # a projector commit each: a file each
        events = [usage(f"m-{commit}-{n}", prompt=commit * 100 + n) for n in range(20)]
        ledger.publish_json(ledger.topics.usage, [(event["event_id"], event) for event in events])
        ledger.project(store)
    expected = sum(commit * 100 + n for commit in range(COMMITS) for n in range(20))
    with open_store(store, read_only=True) as connection:
        (files_before,) = connection.execute(LIVE_FILES).fetchone() or (0,)
        (snapshots_before,) = connection.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone() or (0,)
    assert files_before >= COMMITS

    settings = ledger.settings.model_copy(update={"store_maintenance_every_s": 1.0, "store_snapshot_retention_s": 0})
    sums: list[int] = []
    stop_reading = threading.Event()
    reader = threading.Thread(target=sums_until, args=(store, stop_reading, sums))
    reader.start()
    connection = open_store(store)
    try:

        async def project_for_a_while() -> int:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(PROJECT_SECONDS, stop.set)
            stats = await Projector(settings, connection, count_tokens).run(stop)
            return stats.maintenance_rounds

        rounds = asyncio.run(project_for_a_while())
        (files_after,) = connection.execute(LIVE_FILES).fetchone() or (0,)
        (snapshots_after,) = connection.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone() or (0,)
    finally:
        connection.close()
        stop_reading.set()
        reader.join(timeout=30)
    assert rounds >= 1
    assert files_after < files_before / 3, (files_before, files_after)
    assert snapshots_after < snapshots_before
    assert len(sums) > 20, "the reader hardly read"
    assert set(sums) == {expected}
