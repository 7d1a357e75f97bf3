"""The local BudgetManager backend: users in a DuckDB file, changed by the ledger's fold.

Each user's ``BudgetState`` (the same type and the same ``apply_command`` / ``apply_batch``
/ ``advance`` as the live worker, so windows and resets mean the same thing) is a row;
every charge is a row too (its event_id is the key, so a retried completion counts once,
and per-model cost is a sum over the current window).

DuckDB admits one process at a time to a file: each operation opens the file, runs one
transaction and closes it, and a process that finds the file locked waits (bounded) and
tries again. So every update is atomic, and processes sharing a file lose none.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb

from ledger.domain.budgets import BudgetCommand, BudgetSpec, BudgetState
from ledger.domain.errors import LedgerError
from ledger.domain.events import UsageEvent
from ledger.domain.fold import Charge, advance, apply_batch, apply_command, new_state
from ledger.domain.pricing import price_event
from ledger.integrations.litellm_budget import overall_limit
from ledger.sdk.budget_manager.records import UnknownUser, UserBudget

LOCK_RETRY_SLEEP_S_MAX = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_manager_users (
    project VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    created_at DOUBLE NOT NULL,
    state VARCHAR NOT NULL,
    PRIMARY KEY (project, user_id)
);
CREATE TABLE IF NOT EXISTS budget_manager_charges (
    project VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    cost_nanos BIGINT NOT NULL,
    PRIMARY KEY (project, user_id, event_id)
);
"""

# One in-process lock per file: DuckDB shares one database instance between the
# connections of a process, and two of its transactions on one row would conflict.
_file_locks: dict[Path, threading.Lock] = {}
_file_locks_guard = threading.Lock()


class BudgetFileBusy(LedgerError):
    """Another process held the budget file longer than the lock timeout."""

    reason = "budget_file_busy"


def _file_lock(path: Path) -> threading.Lock:
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return "lock" in str(exc).lower()


class LocalBudgets:
    """BudgetBackend on a DuckDB file, shared safely by threads and processes."""

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
        with self._transaction() as connection:
            connection.execute(_SCHEMA)

    def close(self) -> None:
        """Nothing is held between operations."""

    def load(self, user: str) -> UserBudget | None:
        now = self._clock()
        with self._transaction() as connection:
            found = self._read(connection, user)
            return None if found is None else self._budget(connection, user, advance(found[0], now)[0], found[1])

    def load_all(self) -> list[UserBudget]:
        now = self._clock()
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT user_id, state, created_at FROM budget_manager_users WHERE project = ? ORDER BY user_id",
                [self.project_name],
            ).fetchall()
            budgets: list[UserBudget] = []
            for user, raw, created_at in rows:
                state = advance(BudgetState.model_validate_json(raw), now)[0]
                budget = self._budget(connection, user, state, created_at)
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
            found = self._read(connection, user)
            state = new_state(command.scope_key) if found is None else advance(found[0], now)[0]
            state, _ = apply_command(state, command)
            self._write(connection, user, state, created_at)
            return self._existing(connection, user, state, created_at)

    def charge(self, user: str, event: UsageEvent) -> UserBudget:
        from ledger.pricebooks.genai import genai_prices_book
        from ledger.tokenizer import count_tokens

        # Priced before the file is opened: UnpricedModel leaves everything as it was.
        entry = price_event(event, genai_prices_book(), count_tokens=count_tokens)
        with self._transaction() as connection:
            found = self._read(connection, user)
            if found is None:
                raise UnknownUser(user)
            state, created_at = found
            inserted = connection.execute(
                "INSERT INTO budget_manager_charges VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [self.project_name, user, entry.event_id, entry.occurred_at, entry.model, entry.cost_nanos],
            ).fetchall()
            state = advance(state, event.occurred_at)[0]
            if inserted:
                charge = Charge(entry.event_id, entry.occurred_at, entry.model, entry.cost_nanos)
                state, _ = apply_batch(state, [charge])
                self._write(connection, user, state, created_at)
            return self._existing(connection, user, state, created_at)

    def reset(self, user: str) -> UserBudget:
        now = self._clock()
        with self._transaction() as connection:
            found = self._read(connection, user)
            if found is None:
                raise UnknownUser(user)
            state, created_at = found
            command = BudgetCommand(
                command_id=uuid.uuid4().hex, scope_key=state.scope_key, action="reset", issued_at=now
            )
            state, _ = apply_command(advance(state, now)[0], command)
            self._write(connection, user, state, created_at)
            return self._existing(connection, user, state, created_at)

    # -- storage ----------------------------------------------------------------------

    def _read(self, connection: duckdb.DuckDBPyConnection, user: str) -> tuple[BudgetState, float] | None:
        row = connection.execute(
            "SELECT state, created_at FROM budget_manager_users WHERE project = ? AND user_id = ?",
            [self.project_name, user],
        ).fetchone()
        return None if row is None else (BudgetState.model_validate_json(row[0]), row[1])

    def _write(self, connection: duckdb.DuckDBPyConnection, user: str, state: BudgetState, created_at: float) -> None:
        connection.execute(
            "INSERT OR REPLACE INTO budget_manager_users VALUES (?, ?, ?, ?)",
            [self.project_name, user, created_at, state.model_dump_json()],
        )

    def _budget(
        self, connection: duckdb.DuckDBPyConnection, user: str, state: BudgetState, created_at: float
    ) -> UserBudget | None:
        overall = overall_limit(state)
        if overall is None or overall.spec.max_budget_nanos is None:
            return None
        rows = connection.execute(
            "SELECT model, SUM(cost_nanos)::BIGINT FROM budget_manager_charges "
            "WHERE project = ? AND user_id = ? AND occurred_at >= ? GROUP BY model ORDER BY model",
            [self.project_name, user, overall.window_start],
        ).fetchall()
        return UserBudget(
            user=user,
            total_budget_nanos=overall.spec.max_budget_nanos,
            current_cost_nanos=overall.spend_nanos,
            duration=overall.spec.duration,
            created_at=created_at,
            last_updated_at=overall.window_start.timestamp(),
            model_cost_nanos={model: int(nanos) for model, nanos in rows},
        )

    def _existing(
        self, connection: duckdb.DuckDBPyConnection, user: str, state: BudgetState, created_at: float
    ) -> UserBudget:
        budget = self._budget(connection, user, state, created_at)
        if budget is None:
            raise UnknownUser(user)
        return budget

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with _file_lock(self.path):
            connection = self._connect()
            try:
                connection.execute("BEGIN TRANSACTION")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            finally:
                connection.close()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting while another process holds it (bounded)."""
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise BudgetFileBusy(
                        f"{self.path} stayed locked by another process for {self._lock_timeout_s:g} s: {exc}"
                    ) from exc
                time.sleep(random.uniform(0.001, LOCK_RETRY_SLEEP_S_MAX))
