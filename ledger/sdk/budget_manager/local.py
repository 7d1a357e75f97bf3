"""The local BudgetManager backend: users in an SQLite file (WAL mode), changed by the
ledger's fold.

Each user is a row: its ``BudgetState`` (the same type and the same ``apply_command`` /
``apply_batch`` / ``advance`` as the live worker, so windows and resets mean the same
thing), and its per-model costs in the window they were counted in (a charge the fold
counts in the current window adds to its model; a new window starts them from nothing), so
they add up to the window's spend and cost the same to read however many calls it holds.
Every charge is a row too, keyed by its event_id, so a retried completion counts once.

Why SQLite in WAL mode (the standard library's): measured on this 2-core machine (issue
22, three runs, the machine shared), one update transaction (read the user, insert the
charge, write the user) took 34-65 µs in WAL mode with ``synchronous=NORMAL``; 258-682 µs
with ``synchronous=FULL`` (an fsync per update); 0.8-1.4 ms with SQLite's rollback journal;
7.8-12.4 ms in DuckDB with a kept connection, which besides admits one process to a file,
so processes sharing one cannot keep it; 32-39 ms in DuckDB opened per operation (the
earlier backend: opening the file was most of it). An append-only journal under ``flock``
took 11-22 µs, but it is folded at every open and would be ours to compact and to mend
after a torn last line. The fold's own work is about 80 µs an update, so SQLite's share is
small, and it brings transactions, locking between processes and crash recovery.

Durable: ``synchronous=NORMAL`` in WAL mode writes a commit to the write-ahead log before
the method returns, so an update that returned survives its process being killed
(SIGKILL included). Only a crash of the operating system or a power loss can lose the last
commits (the file stays consistent); ``FULL`` would close that gap at an fsync per update,
7 to 12 times slower.

Processes: a manager keeps one connection (a process that forks opens its own). Every
change is one ``BEGIN IMMEDIATE`` transaction: one writer at a time per file, the others
wait up to ``lock_timeout_s`` and then raise ``BudgetFileBusy``. Reads see the last commit
and never wait for a writer. WAL needs the file on a local file system (not NFS).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.errors import LedgerError
from ledger.domain.events import UsageEvent
from ledger.domain.fold import Charge, advance, apply_batch, apply_command, new_state
from ledger.domain.pricing import price_event
from ledger.integrations.litellm_budget import overall_limit
from ledger.sdk.budget_manager.legacy import (
    LegacyBudgets,
    LegacyNeedsDuckDB,
    legacy_file_for,
    read_legacy,
    refuse_duckdb_file,
)
from ledger.sdk.budget_manager.records import UnknownUser, UserBudget

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version: 0 is a file not set up yet
JOURNAL_MODE = "wal"
SYNCHRONOUS = "NORMAL"  # in WAL mode: survives a killed process, not a power loss (see above)

_SCHEMA = (
    """CREATE TABLE budget_manager_users (
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        model_costs_window TEXT,
        model_cost_nanos TEXT NOT NULL,
        PRIMARY KEY (project, user_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE budget_manager_charges (
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        model TEXT NOT NULL,
        cost_nanos INTEGER NOT NULL,
        PRIMARY KEY (project, user_id, event_id)
    ) WITHOUT ROWID""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

# Connections a forked child inherited: SQLite forbids using them across fork(), and
# closing one in the child could disturb the parent's locks, so they are only kept here.
_inherited_connections: list[sqlite3.Connection] = []


@dataclass(frozen=True, slots=True)
class _UserRow:
    """A user as stored: its state, and its per-model costs in the window ``model_costs_window``."""

    state: BudgetState
    created_at: float
    model_costs_window: str | None
    model_cost_nanos: dict[str, int]

    def model_costs_in(self, window_start: datetime) -> dict[str, int]:
        """The per-model costs of the window that starts at ``window_start``: none if they
        were counted in another."""
        return dict(self.model_cost_nanos) if self.model_costs_window == _instant(window_start) else {}


class BudgetFileBusy(LedgerError):
    """Another process held the budget file longer than the lock timeout."""

    reason = "budget_file_busy"


def _instant(at: datetime) -> str:
    """A time as stored: ISO 8601 in UTC, one spelling per instant (window keys compare equal)."""
    return at.astimezone(UTC).isoformat()


def _is_busy(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting for another connection's lock."""
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode & 0xFF in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


_USER_FIELDS = "state, created_at, model_costs_window, model_cost_nanos"


def _user_row(state: str, created_at: float, model_costs_window: str | None, model_cost_nanos: str) -> _UserRow:
    costs = json.loads(model_cost_nanos)
    if not all(isinstance(nanos, int) for nanos in costs.values()):
        raise ValueError(f"per-model costs are integer nanos, found {model_cost_nanos}")
    return _UserRow(BudgetState.model_validate_json(state), created_at, model_costs_window, costs)


def _budget(user: str, row: _UserRow, state: BudgetState) -> UserBudget | None:
    """The user's overall budget in ``state`` (``row.state`` as of now), or None."""
    overall = overall_limit(state)
    if overall is None or overall.spec.max_budget_nanos is None:
        return None
    return UserBudget(
        user=user,
        total_budget_nanos=overall.spec.max_budget_nanos,
        current_cost_nanos=overall.spend_nanos,
        duration=overall.spec.duration,
        created_at=row.created_at,
        last_updated_at=overall.window_start.timestamp(),
        model_cost_nanos=dict(sorted(row.model_costs_in(overall.window_start).items())),
    )


def _existing(user: str, row: _UserRow, state: BudgetState | None = None) -> UserBudget:
    budget = _budget(user, row, row.state if state is None else state)
    if budget is None:
        raise UnknownUser(user)
    return budget


class LocalBudgets:
    """BudgetBackend on an SQLite file, shared safely by threads and processes."""

    def __init__(
        self,
        path: Path,
        project_name: str,
        *,
        clock: Callable[[], datetime],
        lock_timeout_s: float = 10.0,
    ) -> None:
        self.path = path.resolve()
        self.project_name = project_name
        self._clock = clock
        self._lock_timeout_s = lock_timeout_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = os.getpid()
        refuse_duckdb_file(self.path)
        with self._transaction(write=False) as connection:
            version = self._schema_version(connection)
        if version == 0:  # a new file: set it up once, whichever process gets there first
            with self._transaction() as connection:
                if self._schema_version(connection) == 0:
                    self._create(connection)

    def close(self) -> None:
        """Close the connection (committed updates are already in the file); a later call
        opens it again."""
        with self._lock:
            if self._db is not None and self._db_pid == os.getpid():
                self._db.close()
                self._db = None

    def load(self, user: str) -> UserBudget | None:
        now = self._clock()
        with self._transaction(write=False) as connection:
            row = self._read(connection, user)
        return None if row is None else _budget(user, row, advance(row.state, now)[0])

    def load_all(self) -> list[UserBudget]:
        now = self._clock()
        with self._transaction(write=False) as connection:
            rows = connection.execute(
                f"SELECT user_id, {_USER_FIELDS} FROM budget_manager_users WHERE project = ? ORDER BY user_id",
                [self.project_name],
            ).fetchall()
        budgets: list[UserBudget] = []
        for user, *fields in rows:
            row = _user_row(*fields)
            budget = _budget(user, row, advance(row.state, now)[0])
            if budget is not None:
                budgets.append(budget)
        return budgets

    def create(self, user: str, total_budget_nanos: int, duration: str | None, created_at: float) -> UserBudget:
        now = self._clock()
        spec = BudgetSpec(max_budget_nanos=total_budget_nanos, duration=duration)
        command = BudgetCommand(
            command_id=uuid.uuid4().hex, scope_key=f"user:{user}", action="upsert", issued_at=now, budgets=(spec,)
        )
        with self._transaction() as connection:
            row = self._read(connection, user)
            if row is None:
                row = _UserRow(new_state(command.scope_key), created_at, None, {})
            state, _ = apply_command(advance(row.state, now)[0], command)
            row = _UserRow(state, created_at, row.model_costs_window, row.model_cost_nanos)
            self._write(connection, user, row)
        return _existing(user, row)

    def charge(self, user: str, event: UsageEvent) -> UserBudget:
        from ledger.pricebooks.genai import genai_prices_book
        from ledger.tokenizer import count_tokens

        # Priced before the transaction: UnpricedModel leaves everything as it was.
        entry = price_event(event, genai_prices_book(), count_tokens=count_tokens)
        with self._transaction() as connection:
            row = self._read(connection, user)
            if row is None:
                raise UnknownUser(user)
            inserted = connection.execute(
                "INSERT INTO budget_manager_charges VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [self.project_name, user, entry.event_id, _instant(entry.occurred_at), entry.model, entry.cost_nanos],
            ).fetchall()
            state = advance(row.state, event.occurred_at)[0]
            if not inserted:
                return _existing(user, row, state)
            charge = Charge(entry.event_id, entry.occurred_at, entry.model, entry.cost_nanos)
            state, _ = apply_batch(state, [charge])
            overall = overall_limit(state)
            if overall is None:
                raise UnknownUser(user)
            model_costs = row.model_costs_in(overall.window_start)
            # The fold counts a charge in the window it falls in, never in one that began after it.
            if entry.occurred_at >= overall.window_start:
                model_costs[entry.model] = model_costs.get(entry.model, 0) + entry.cost_nanos
            row = _UserRow(state, row.created_at, _instant(overall.window_start), model_costs)
            self._write(connection, user, row)
        return _existing(user, row)

    def reset(self, user: str) -> UserBudget:
        now = self._clock()
        with self._transaction() as connection:
            row = self._read(connection, user)
            if row is None:
                raise UnknownUser(user)
            command = BudgetCommand(
                command_id=uuid.uuid4().hex, scope_key=row.state.scope_key, action="reset", issued_at=now
            )
            state, _ = apply_command(advance(row.state, now)[0], command)
            row = _UserRow(state, row.created_at, row.model_costs_window, row.model_cost_nanos)
            self._write(connection, user, row)
        return _existing(user, row)

    # -- storage ----------------------------------------------------------------------

    def _read(self, connection: sqlite3.Connection, user: str) -> _UserRow | None:
        found = connection.execute(
            f"SELECT {_USER_FIELDS} FROM budget_manager_users WHERE project = ? AND user_id = ?",
            [self.project_name, user],
        ).fetchone()
        return None if found is None else _user_row(*found)

    def _write(self, connection: sqlite3.Connection, user: str, row: _UserRow) -> None:
        connection.execute(
            "INSERT OR REPLACE INTO budget_manager_users VALUES (?, ?, ?, ?, ?, ?)",
            [
                self.project_name,
                user,
                row.created_at,
                row.state.model_dump_json(),
                row.model_costs_window,
                json.dumps(row.model_cost_nanos, sort_keys=True),
            ],
        )

    def _schema_version(self, connection: sqlite3.Connection) -> int:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(
                f"{self.path} has budget file schema {version}; this spend-ledger reads {SCHEMA_VERSION}: "
                "a newer spend-ledger wrote it"
            )
        return version

    def _create(self, connection: sqlite3.Connection) -> None:
        """Set up a new file, importing the earlier backend's DuckDB file next to it."""
        for statement in _SCHEMA:
            connection.execute(statement)
        legacy_path = legacy_file_for(self.path)
        if legacy_path is None:
            return
        try:
            import duckdb
        except ImportError as exc:
            raise LegacyNeedsDuckDB(legacy_path) from exc
        try:
            legacy = read_legacy(legacy_path)
        except duckdb.IOException as exc:
            raise BudgetFileBusy(
                f"{legacy_path} (the earlier backend's file, to import into {self.path.name}) "
                f"is open in another process: {exc}"
            ) from exc
        self._import(connection, legacy)
        log.warning(
            "imported %d users and %d charges from %s into %s; %s is left as it was",
            len(legacy.users),
            len(legacy.charges),
            legacy.path,
            self.path,
            legacy.path.name,
        )

    def _import(self, connection: sqlite3.Connection, legacy: LegacyBudgets) -> None:
        """The old file's users (with their per-model costs) and charges, in one transaction."""
        model_costs = legacy.model_costs()
        users = []
        for user in legacy.users:
            window_start, costs = model_costs.get((user.project, user.user_id), (None, {}))
            window = None if window_start is None else _instant(window_start)
            users.append(
                (
                    user.project,
                    user.user_id,
                    user.created_at,
                    user.state_json,
                    window,
                    json.dumps(costs, sort_keys=True),
                )
            )
        connection.executemany("INSERT INTO budget_manager_users VALUES (?, ?, ?, ?, ?, ?)", users)
        connection.executemany(
            "INSERT INTO budget_manager_charges VALUES (?, ?, ?, ?, ?, ?)",
            [
                (c.project, c.user_id, c.event_id, _instant(c.occurred_at), c.model, c.cost_nanos)
                for c in legacy.charges
            ],
        )

    def _connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are explicit), WAL and
        ``synchronous=NORMAL``; waits up to the lock timeout for another process's lock."""
        connection = sqlite3.connect(
            self.path, timeout=self._lock_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            mode = connection.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}").fetchone()[0]
            if mode != JOURNAL_MODE:
                raise OSError(
                    f"{self.path}: SQLite kept journal mode {mode!r}, not WAL (a local file system is needed)"
                )
            connection.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        except BaseException as exc:
            connection.close()
            if _is_busy(exc):
                raise self._busy(exc) from exc
            if isinstance(exc, sqlite3.DatabaseError):
                exc.add_note(f"the budget file: {self.path}")
            raise
        return connection

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened at first use; a forked child opens its own."""
        if self._db is not None and self._db_pid != os.getpid():
            _inherited_connections.append(self._db)
            self._db = None
        if self._db is None:
            self._db = self._connect()
            self._db_pid = os.getpid()
        return self._db

    def _busy(self, exc: BaseException) -> BudgetFileBusy:
        return BudgetFileBusy(f"{self.path} stayed locked by another process for {self._lock_timeout_s:g} s: {exc}")

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``write`` takes the file's write lock at once (so two writers
        never deadlock upgrading a read); a read sees the last commit and never waits."""
        with self._lock:
            connection = self._connection()
            try:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield connection
                connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                if _is_busy(exc):
                    raise self._busy(exc) from exc
                raise
