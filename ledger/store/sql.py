"""Ad-hoc SQL on the store, read-only with external access off (DESIGN section 7).

Two walls. Here: exactly one statement, and only a query (``SELECT`` in any of its forms,
``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``EXPLAIN``): a write, ``COPY``, ``ATTACH``,
``SET``, ``CALL``, ``INSTALL``/``LOAD`` is refused before it runs. Beneath, DuckDB: the
lake is attached read-only, with access to every file but the lake's own, every network
address and every extension off and the configuration locked (``open_store(...,
sandboxed=True)``), so a query cannot read a file either. Rows and time are bounded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import duckdb

from ledger.store.location import StoreLocation
from ledger.store.schema import open_store

SQL_ROWS_DEFAULT = 10_000
SQL_ROWS_MAX = 1_000_000
SQL_TIMEOUT_S_DEFAULT = 30.0
SQL_TIMEOUT_S_MAX = 3_600.0


class SqlError(Exception):
    """An ad-hoc statement that did not run; the message says why."""


class StatementNotAllowed(SqlError):
    """A statement the read-only sandbox refuses: it writes, reads files, attaches a
    database, installs or loads an extension, changes a setting, or is not exactly one."""


class InvalidStatement(SqlError):
    """A statement DuckDB cannot parse or run (syntax, unknown table, type error)."""


class StatementTimedOut(SqlError):
    """A statement still running after its time limit (it was interrupted)."""


@dataclass(frozen=True, slots=True)
class SqlResult:
    """Columns and up to ``row_limit`` rows; ``truncated`` when the statement returned more."""

    columns: tuple[str, ...]
    column_types: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool
    row_limit: int


# The statement kinds that only read: SELECT covers DESCRIBE, SHOW, SUMMARIZE, PRAGMA
# table_info, VALUES and FROM-first queries as DuckDB parses them.
_QUERY_KINDS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
_REFUSED_KIND_NAMES = {
    "INSERT": "writing",
    "MERGE_INTO": "writing",
    "UPDATE": "writing",
    "DELETE": "writing",
    "CREATE": "creating objects",
    "DROP": "dropping objects",
    "ALTER": "altering objects",
    "COPY": "COPY (reading or writing files)",
    "EXPORT": "exporting the database",
    "ATTACH": "attaching databases",
    "DETACH": "detaching databases",
    "SET": "changing settings (SET, USE)",
    "LOAD": "installing or loading extensions",
    "CALL": "calling procedures (CALL, CHECKPOINT)",
    "PRAGMA": "PRAGMA",
    "VACUUM": "maintenance (VACUUM, ANALYZE)",
    "TRANSACTION": "transaction control",
}


def run_readonly_sql(
    store: StoreLocation, statement: str, row_limit: int = SQL_ROWS_DEFAULT, *, timeout_s: float = SQL_TIMEOUT_S_DEFAULT
) -> SqlResult:
    """Run one query on ``store`` in the read-only sandbox, at the lake's latest snapshot.

    Raises ``StatementNotAllowed``, ``InvalidStatement``, ``StatementTimedOut``, or
    ``StoreUnavailable`` when the store cannot be opened.
    """
    if not 1 <= row_limit <= SQL_ROWS_MAX:
        raise ValueError(f"row_limit must be between 1 and {SQL_ROWS_MAX}, got {row_limit}")
    if not 0 < timeout_s <= SQL_TIMEOUT_S_MAX:
        raise ValueError(f"timeout_s must be above 0 and at most {SQL_TIMEOUT_S_MAX}, got {timeout_s}")
    connection = open_store(store, read_only=True, sandboxed=True)
    try:
        _check_one_query(connection, statement)
        return _run(connection, statement, row_limit, timeout_s)
    finally:
        connection.close()


def _check_one_query(connection: duckdb.DuckDBPyConnection, statement: str) -> None:
    """Refuse anything but exactly one query. Parsed in the sandbox: DuckDB's parser reads
    files for some statements (IMPORT DATABASE), and there it cannot."""
    try:
        statements = connection.extract_statements(statement)
    except duckdb.PermissionException as exc:
        raise _refusal(exc) from exc
    except duckdb.Error as exc:
        raise InvalidStatement(f"DuckDB could not parse the statement: {exc}") from exc
    if len(statements) != 1:
        raise StatementNotAllowed(f"exactly one SQL statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind not in _QUERY_KINDS:
        what = _REFUSED_KIND_NAMES.get(kind.name, f"a {kind.name} statement")
        raise StatementNotAllowed(f"{what} is not allowed: only a query (SELECT, DESCRIBE, SHOW, EXPLAIN) runs here")


def _run(connection: duckdb.DuckDBPyConnection, statement: str, row_limit: int, timeout_s: float) -> SqlResult:
    """Run the query, interrupted after ``timeout_s``; up to ``row_limit`` rows."""
    timer = threading.Timer(timeout_s, connection.interrupt)
    timer.start()
    try:
        result = connection.execute(statement)
        fetched = result.fetchmany(row_limit + 1)
        description = result.description or []
    except duckdb.InterruptException as exc:
        raise StatementTimedOut(f"the statement ran longer than {timeout_s:g} s and was stopped") from exc
    except duckdb.Error as exc:
        raise _refusal(exc) from exc
    finally:
        timer.cancel()
        timer.join()  # an interrupt already under way must not meet a closed connection
    return SqlResult(
        columns=tuple(str(column[0]) for column in description),
        column_types=tuple(str(column[1]) for column in description),
        rows=tuple(tuple(row) for row in fetched[:row_limit]),
        truncated=len(fetched) > row_limit,
        row_limit=row_limit,
    )


def _refusal(exc: duckdb.Error) -> SqlError:
    """Name what the sandbox refused. The headline is matched on DuckDB's wording; should
    that change, the statement is still refused, under the generic headline."""
    said = f"DuckDB said: {exc}"
    text = str(exc)
    # An extension DuckDB would install by itself (a URL in ATTACH) fails on the locked
    # extension folder with a plain Error, in the same words as a refused file.
    if isinstance(exc, duckdb.PermissionException) or "disabled by configuration" in text:
        return StatementNotAllowed(
            "reading or writing files, attaching databases and installing or loading extensions "
            f"are not allowed (external access is off). {said}"
        )
    if "read-only mode" in text:
        return StatementNotAllowed(f"writing is not allowed: the store is open read-only. {said}")
    if "configuration has been locked" in text:
        return StatementNotAllowed(f"changing settings is not allowed: the configuration is locked. {said}")
    return InvalidStatement(f"DuckDB could not run the statement. {said}")
