"""Keeping the lake small and fast: compaction and snapshot expiry, run by its writer
(docs/decisions/0001-analytics-table-format.md).

Every projector commit adds a Parquet file per table it touched, and every commit is a
snapshot. On a schedule, the writer (between two of its own commits, so the two never
conflict) flushes the rows small tables keep in the catalog, merges adjacent small files,
expires snapshots older than the retention, and deletes the files no snapshot still
names once they are older than the retention too. Readers are never blocked: a query
reads one snapshot, and the files of any snapshot younger than the retention stay.

Each step is a ``CALL`` (``SELECT ... FROM ducklake_merge_adjacent_files(...)`` returned
rows yet changed nothing in the spike), and the report counts live files before and
after, so a step that silently did nothing shows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from ledger.store.schema import LAKE

log = logging.getLogger(__name__)

_LIVE_FILES = f"SELECT count(*) FROM __ducklake_metadata_{LAKE}.ducklake_data_file WHERE end_snapshot IS NULL"
_SNAPSHOTS = f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')"


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one round of maintenance changed."""

    live_files_before: int
    live_files_after: int
    snapshots_before: int
    snapshots_after: int
    seconds: float


def maintain(connection: duckdb.DuckDBPyConnection, *, retention: timedelta, now: datetime) -> MaintenanceReport:
    """One round on the writer's connection: flush, merge, expire, clean up."""
    started = time.monotonic()
    files_before = _count(connection, _LIVE_FILES)
    snapshots_before = _count(connection, _SNAPSHOTS)
    older_than = now - retention
    connection.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")
    connection.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    connection.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => ?)", [older_than])
    connection.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => ?)", [older_than])
    connection.execute(f"CALL ducklake_delete_orphaned_files('{LAKE}', older_than => ?)", [older_than])
    report = MaintenanceReport(
        live_files_before=files_before,
        live_files_after=_count(connection, _LIVE_FILES),
        snapshots_before=snapshots_before,
        snapshots_after=_count(connection, _SNAPSHOTS),
        seconds=time.monotonic() - started,
    )
    log.info(
        "store maintenance: live files %d -> %d, snapshots %d -> %d in %.2f s",
        report.live_files_before,
        report.live_files_after,
        report.snapshots_before,
        report.snapshots_after,
        report.seconds,
    )
    return report


def _count(connection: duckdb.DuckDBPyConnection, query: str) -> int:
    row = connection.execute(query).fetchone()
    return int(row[0]) if row else 0
