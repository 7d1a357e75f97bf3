"""The earlier local backend's DuckDB file, read once into the SQLite file that replaced it.

Until issue 22 the local BudgetManager kept ``user_cost.duckdb``. A user who upgrades
expects their budgets and spend to still be there: a new SQLite file imports the DuckDB file
of the same name with the suffix ``.duckdb`` (``user_cost.duckdb`` for the default
``user_cost.sqlite``), once, when it is created. The DuckDB file is only read, and left as
it was. A ``path=`` that names the DuckDB file itself is refused with ``OldBudgetFile``,
which says which path to pass instead.

DuckDB is imported only to read such a file: the client-side install has no DuckDB, and
on it an old file to import raises ``LegacyNeedsDuckDB`` with the install line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger.domain.budgets import BudgetState
from ledger.domain.errors import LedgerError
from ledger.integrations.litellm_budget import overall_limit

LEGACY_SUFFIX = ".duckdb"
# A DuckDB database file starts with an 8-byte checksum, then these four bytes.
_DUCKDB_MAGIC = b"DUCK"
_DUCKDB_MAGIC_OFFSET = 8
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OldBudgetFile(LedgerError):
    """``path=`` names a DuckDB file of the earlier local backend."""

    reason = "old_budget_file"


class LegacyNeedsDuckDB(LedgerError):
    """An earlier backend's DuckDB file is there to import, and DuckDB is not installed."""

    reason = "legacy_needs_duckdb"

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is the earlier local backend's DuckDB file, imported once into the SQLite file "
            "beside it; reading it needs DuckDB: pip install 'duckdb>=1.3,<3' (or move the file away "
            "to start with no users)"
        )


@dataclass(frozen=True, slots=True)
class LegacyUser:
    project: str
    user_id: str
    created_at: float
    state_json: str


@dataclass(frozen=True, slots=True)
class LegacyCharge:
    project: str
    user_id: str
    event_id: str
    occurred_at: datetime
    model: str
    cost_nanos: int


@dataclass(frozen=True, slots=True)
class LegacyBudgets:
    """Everything the old file held, every project's."""

    path: Path
    users: list[LegacyUser]
    charges: list[LegacyCharge]

    def model_costs(self) -> dict[tuple[str, str], tuple[datetime, dict[str, int]]]:
        """Each (project, user)'s per-model costs in the window its state was in: the
        charges since the window's start, as the old backend summed them at each read."""
        costs: dict[tuple[str, str], tuple[datetime, dict[str, int]]] = {}
        for user in self.users:
            overall = overall_limit(BudgetState.model_validate_json(user.state_json))
            if overall is not None:
                costs[(user.project, user.user_id)] = (overall.window_start, {})
        for charge in self.charges:
            found = costs.get((charge.project, charge.user_id))
            if found is not None and charge.occurred_at >= found[0]:
                found[1][charge.model] = found[1].get(charge.model, 0) + charge.cost_nanos
        return costs


def is_duckdb_file(path: Path) -> bool:
    """Whether ``path`` is a DuckDB database file (by its header, not its name)."""
    try:
        with path.open("rb") as file:
            head = file.read(_DUCKDB_MAGIC_OFFSET + len(_DUCKDB_MAGIC))
    except (FileNotFoundError, IsADirectoryError):
        return False
    return head[_DUCKDB_MAGIC_OFFSET:] == _DUCKDB_MAGIC


def refuse_duckdb_file(path: Path) -> None:
    """``OldBudgetFile`` if ``path`` is a DuckDB file: the new backend keeps SQLite."""
    if is_duckdb_file(path):
        replacement = path.with_suffix(".sqlite")
        raise OldBudgetFile(
            f"{path} is a DuckDB file of the earlier local BudgetManager, which now keeps an SQLite file: "
            f"pass path={str(replacement)!r} instead, and its first open imports every user and charge "
            f"from {path.name} (left as it was)"
        )


def legacy_file_for(path: Path) -> Path | None:
    """The earlier backend's file that a new SQLite file at ``path`` imports, if there is one."""
    legacy = path.with_suffix(LEGACY_SUFFIX)
    return legacy if legacy != path and is_duckdb_file(legacy) else None


def read_legacy(path: Path) -> LegacyBudgets:
    """Every user and charge of the old file (none if it holds no BudgetManager tables).
    Raises ``duckdb.IOException`` while an older spend-ledger holds the file."""
    try:
        import duckdb
    except ImportError as exc:
        raise LegacyNeedsDuckDB(path) from exc
    connection = duckdb.connect(str(path), read_only=True)
    try:
        tables = {
            name
            for (name,) in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        if not {"budget_manager_users", "budget_manager_charges"} <= tables:
            return LegacyBudgets(path, [], [])
        users = [
            LegacyUser(project, user_id, float(created_at), state)
            for project, user_id, created_at, state in connection.execute(
                "SELECT project, user_id, created_at, state FROM budget_manager_users ORDER BY project, user_id"
            ).fetchall()
        ]
        charges = [
            LegacyCharge(project, user_id, event_id, _EPOCH + timedelta(microseconds=occurred_us), model, int(nanos))
            for project, user_id, event_id, occurred_us, model, nanos in connection.execute(
                "SELECT project, user_id, event_id, epoch_us(occurred_at), model, cost_nanos "
                "FROM budget_manager_charges ORDER BY project, user_id, occurred_at"
            ).fetchall()
        ]
        return LegacyBudgets(path, users, charges)
    finally:
        connection.close()
