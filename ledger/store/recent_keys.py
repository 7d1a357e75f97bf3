"""The keys a table stored recently, held in memory by the writer, so that an append finds
copies of its rows without reading the lake.

A lake table has no index: the writer's look-up for copies (``ledger.store.writer``) read
every stored key in its window, each batch. A usage event's window is the dedup horizon,
so each batch read up to a week of event ids: 12% of the projector's CPU with 300,000
stored, and most of it at millions. Here each key's 64-bit hash and its time sit in a
table of the writer's own in-memory database (never the lake), for the stored rows whose
time is at or after ``since``. A batch whose window starts at or after ``since`` is
looked up here: its keys whose hashes are found (a copy, or rarely another key with the
same hash) are then looked for in the lake itself, reading only the files of the times
the hashes were found at. So a key is taken for a copy exactly when the lake holds it.
A window that starts before ``since`` (an old backlog) is looked up in the lake, as
before.

The hashes are loaded once from the lake, and each batch's keys added after its commit;
if adding fails, this index is no longer used (``usable``), as it may miss a key.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

# Beyond the dedup horizon, how far back a record's time may be and still be looked up here
# (a backlog the projector reads after a pause). An older one is looked up in the lake.
BACKLOG_COVERED = timedelta(days=1)


class RecentKeys:
    """Hashes of the keys ``table`` holds with ``time_column`` at or after ``since``."""

    def __init__(self, table: str, key: str, time_column: str, since: datetime):
        self.table, self.key, self.time_column = table, key, time_column
        self.since = since
        self.usable = False
        self._memory = f"memory.main.recent_keys_{table}"

    def load(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Read the hashes from the lake (once, when a projector run starts)."""
        connection.execute(
            f"CREATE OR REPLACE TABLE {self._memory} AS SELECT hash({self.key}) AS key_hash,"
            f" {self.time_column} AS key_time FROM {self.table} WHERE {self.time_column} >= ?",
            [self.since],
        )
        self.usable = True

    def covers(self, low: datetime) -> bool:
        """Whether every stored key with a time at or after ``low`` is here."""
        return self.usable and low >= self.since

    def stored(self, connection: duckdb.DuckDBPyConnection, keys: pa.Array, low: datetime, high: datetime) -> set[str]:
        """Those of ``keys`` the table holds with a time in [low, high] (``covers(low)``)."""
        connection.register("incoming_keys", pa.table({"key": keys}))
        try:
            found = connection.execute(
                f"SELECT list(DISTINCT incoming_keys.key), min(recent.key_time), max(recent.key_time)"
                f" FROM incoming_keys JOIN {self._memory} AS recent ON recent.key_hash = hash(incoming_keys.key)"
                f" WHERE recent.key_time BETWEEN ? AND ?",
                [low, high],
            ).fetchone()
        finally:
            connection.unregister("incoming_keys")
        if found is None or not found[0]:
            return set()
        candidates, first, last = found
        rows = connection.execute(
            f"SELECT DISTINCT {self.key} FROM {self.table}"
            f" WHERE {self.time_column} BETWEEN ? AND ? AND {self.key} IN (SELECT unnest(?))",
            [first, last, candidates],
        ).fetchall()
        return {key for (key,) in rows}

    def add(self, connection: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
        """Add the keys of ``rows``, once they are committed to the lake."""
        if not self.usable or rows.num_rows == 0:
            return
        connection.register("added_keys", rows.select([self.key, self.time_column]))
        try:
            connection.execute(
                f"INSERT INTO {self._memory} SELECT hash({self.key}), {self.time_column} FROM added_keys"
                f" WHERE {self.time_column} >= ?",
                [self.since],
            )
        except duckdb.Error as exc:  # the lake is right; this may now miss a key: no longer used
            self.usable = False
            log.warning("the %s key index stopped (copies are looked up in the lake): %s", self.table, exc)
        finally:
            connection.unregister("added_keys")

    def forget_before(self, connection: duckdb.DuckDBPyConnection, since: datetime) -> None:
        """Drop the keys with a time before ``since`` (they are no longer looked up here)."""
        if self.usable and since > self.since:
            connection.execute(f"DELETE FROM {self._memory} WHERE key_time < ?", [since])
            self.since = since
