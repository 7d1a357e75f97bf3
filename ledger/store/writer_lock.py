"""One writer per store: a PostgreSQL advisory lock in the lake's catalog database.

The projector assumes it is the store's only writer (its dedup look-ups and its offsets),
and DuckLake would let a second one commit beside it. The api and ``spend-ledger
project`` each hold this lock for as long as they write: a session-level advisory lock
on a connection of their own, so it goes the moment the process does, SIGKILL included
(PostgreSQL ends the session when its socket closes). A second writer is refused at
start, naming the process that holds the store.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from ledger.store.location import StoreLocation

# The lock's key in the catalog database (one lake per database): an arbitrary constant.
WRITER_LOCK_KEY = 0x5E4D_1ED6_0000_0001
_HOLDER_NAME_MAX = 60  # application_name is cut at 63 bytes by PostgreSQL


class StoreBusy(Exception):
    """Another process writes this store."""


@contextmanager
def writer_lock(store: StoreLocation) -> Iterator[None]:
    """Hold the store's writer lock while the block runs; ``StoreBusy`` if another holds it."""
    holder = f"spend-ledger writer {socket.gethostname()} pid {os.getpid()}"[:_HOLDER_NAME_MAX]
    connection = psycopg.connect(store.catalog, autocommit=True, application_name=holder)
    try:
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,)).fetchone()
        if row is None or not row[0]:
            raise StoreBusy(f"{store} is written by another process ({_holder(connection)}): one writer per store")
        yield
    finally:
        connection.close()  # ends the session, and the lock with it


def _holder(connection: psycopg.Connection[tuple[object, ...]]) -> str:
    """Who holds the lock, as its session named itself."""
    row = connection.execute(  # a bigint key shows as its high and low 32 bits
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::text = %s "
        "AND l.objid::text = %s AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (str(WRITER_LOCK_KEY >> 32), str(WRITER_LOCK_KEY & 0xFFFF_FFFF)),
    ).fetchone()
    return str(row[0]) if row and row[0] else "unknown"
