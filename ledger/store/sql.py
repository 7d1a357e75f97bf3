"""Ad-hoc SQL on the store, read-only with external access off (DESIGN section 7).

DuckDB itself refuses what is not allowed: the file is opened read-only, with file,
network and extension access disabled and the configuration locked (``open_store(...,
sandboxed=True)``), so no statement can write, attach, install, load or read a file, or
switch that back on. Here we only allow one statement, bound its rows and its time, and
name what was refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

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


def run_readonly_sql(
    path: Path, statement: str, row_limit: int = SQL_ROWS_DEFAULT, *, timeout_s: float = SQL_TIMEOUT_S_DEFAULT
) -> SqlResult:
    """Run one statement on the store at ``path`` in the read-only sandbox.

    Raises ``StatementNotAllowed``, ``InvalidStatement``, ``StatementTimedOut``, or
    ``StoreUnavailable`` when the store is missing or held by its writer.
    """
    if not 1 <= row_limit <= SQL_ROWS_MAX:
        raise ValueError(f"row_limit must be between 1 and {SQL_ROWS_MAX}, got {row_limit}")
    if not 0 < timeout_s <= SQL_TIMEOUT_S_MAX:
        raise ValueError(f"timeout_s must be above 0 and at most {SQL_TIMEOUT_S_MAX}, got {timeout_s}")
    try:
        statements = duckdb.extract_statements(statement)
    except duckdb.Error as exc:
        raise InvalidStatement(f"DuckDB could not parse the statement: {exc}") from exc
    if len(statements) != 1:
        raise StatementNotAllowed(f"exactly one SQL statement is allowed, got {len(statements)}")

    connection = open_store(path, read_only=True, sandboxed=True)
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
        connection.close()
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
