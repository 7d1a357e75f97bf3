"""``POST /v1/sql``: one read-only statement on the store, the answer as JSON, CSV or Arrow.

The twin of ``spend-ledger sql``: the same sandbox (``ledger.store.sql``) refuses the same
statements, so the route only bounds the request, picks the format from ``Accept`` and turns
the sandbox's errors into answers. Rows and time are bounded by settings; a request may
ask for less, never more. A few statements run at once (``SQL_STATEMENTS_AT_ONCE_MAX``);
more wait their turn, so ad-hoc queries cannot take every thread or the memory of the api.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ledger.api.deps import ADMIN, ApiError, Services
from ledger.api.schemas import ErrorView
from ledger.api.sql_formats import MEDIA_TYPES, encoded, negotiated_format
from ledger.settings import Settings
from ledger.store.schema import StoreUnavailable
from ledger.store.sql import (
    SQL_ROWS_MAX,
    SQL_TIMEOUT_S_MAX,
    InvalidStatement,
    StatementNotAllowed,
    StatementTimedOut,
    run_readonly_sql,
)

router = APIRouter(dependencies=[ADMIN], tags=["spend"])
QUERY_CHARS_MAX = 100_000
SQL_STATEMENTS_AT_ONCE_MAX = 4
TRUNCATED_HEADER = "Spend-Ledger-Truncated"
ROW_LIMIT_HEADER = "Spend-Ledger-Row-Limit"
ACCEPT_SHOWN_CHARS_MAX = 200  # of an Accept header echoed in a 406
_statements_at_once = asyncio.Semaphore(SQL_STATEMENTS_AT_ONCE_MAX)


def rows_max(settings: Settings) -> int:
    """The most rows a statement may return (``SPEND_LEDGER_SQL_ROWS_MAX``)."""
    return settings.sql_rows_max


def timeout_s_max(settings: Settings) -> float:
    """The longest a statement may run (``SPEND_LEDGER_SQL_TIMEOUT_S``)."""
    return settings.sql_timeout_s


class SqlRequest(BaseModel):
    """One read-only statement; at most ``row_limit`` rows, for at most ``timeout_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, max_length=QUERY_CHARS_MAX, description="one query: SELECT, DESCRIBE, SHOW...")
    row_limit: int | None = Field(
        default=None,
        ge=1,
        le=SQL_ROWS_MAX,
        description="at most this many rows (default and maximum: SPEND_LEDGER_SQL_ROWS_MAX); more is cut, "
        "and the answer says so",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=SQL_TIMEOUT_S_MAX,
        allow_inf_nan=False,
        description="stop the statement after this many seconds (default and maximum: SPEND_LEDGER_SQL_TIMEOUT_S)",
    )


class SqlView(BaseModel):
    """A result as JSON: integers exact however wide, DECIMAL as text, times ISO 8601,
    bytes base64, lists and structs as JSON."""

    columns: list[str]
    column_types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    row_limit: int


_RESULT_HEADERS = {
    TRUNCATED_HEADER: {
        "description": "true when the statement returned more rows than row_limit",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    ROW_LIMIT_HEADER: {"description": "the row limit the statement ran under", "schema": {"type": "integer"}},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SqlView,
        "description": "the result, in the format Accept asks for (JSON unless it asks for CSV or Arrow)",
        "headers": _RESULT_HEADERS,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {
        "model": ErrorView,
        "description": "the body is not valid JSON; the statement is refused (statement_not_allowed) or invalid",
    },
    406: {
        "model": ErrorView,
        "description": "Accept names none of application/json, text/csv, application/vnd.apache.arrow.stream",
    },
    # 408, not 504: the api is no gateway and nothing upstream failed. The request asked
    # for more time than it may have; like Snowflake's SQL API we say so with a 4xx, which
    # the same request repeated will get again (a 5xx invites retries).
    408: {
        "model": ErrorView,
        "description": "the statement ran past its time limit and was stopped (statement_timed_out)",
    },
    422: {
        "model": ErrorView,
        "description": "a field is invalid (row_limit or timeout_s above the api's maximum, named)",
    },
    503: {"model": ErrorView, "description": "the store cannot be opened (store_unavailable)"},
}


@router.post("/v1/sql", summary="Run one read-only SQL statement on the store", responses=_RESPONSES)
async def sql(request: Request, api: Services, body: Annotated[SqlRequest, Body()]) -> Response:
    """One query (``SELECT``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``EXPLAIN``) on the
    store's latest committed snapshot, sandboxed as ``spend-ledger sql`` is: writes,
    ``COPY``, ``ATTACH``, extensions, files, URLs and ``SET`` are refused. ``Accept`` picks
    ``application/json`` (default), ``text/csv`` or ``application/vnd.apache.arrow.stream``;
    the ``Spend-Ledger-Truncated`` header (and ``truncated`` in JSON) says whether rows were cut."""
    result_format = negotiated_format(request.headers.get("accept"))
    if result_format is None:
        offered = ", ".join(MEDIA_TYPES.values())
        asked = request.headers.get("accept", "")[:ACCEPT_SHOWN_CHARS_MAX]
        raise ApiError(406, f"cannot answer in {asked!r}: Accept one of {offered}", "not_acceptable")
    row_limit = _within("row_limit", body.row_limit, rows_max(api.settings), "SPEND_LEDGER_SQL_ROWS_MAX")
    timeout_s = _within("timeout_s", body.timeout_s, timeout_s_max(api.settings), "SPEND_LEDGER_SQL_TIMEOUT_S")
    if api.location is None:
        raise ApiError(503, "the store is not open yet", "store_unavailable", headers={"retry-after": "1"})
    async with _statements_at_once:
        try:
            result = await asyncio.to_thread(run_readonly_sql, api.location, body.query, row_limit, timeout_s=timeout_s)
        except StatementNotAllowed as exc:
            raise ApiError(400, str(exc), "statement_not_allowed") from exc
        except InvalidStatement as exc:
            raise ApiError(400, str(exc), "invalid_statement") from exc
        except StatementTimedOut as exc:
            raise ApiError(408, str(exc), "statement_timed_out", timeout_s=timeout_s) from exc
        except StoreUnavailable as exc:
            raise ApiError(503, f"the store cannot be opened: {exc}", "store_unavailable") from exc
        content = await asyncio.to_thread(encoded, result, result_format)
    headers = {TRUNCATED_HEADER: "true" if result.truncated else "false", ROW_LIMIT_HEADER: str(result.row_limit)}
    return Response(content, media_type=MEDIA_TYPES[result_format], headers=headers)


def _within(field: str, asked: float | None, maximum: float, setting: str) -> Any:
    """``asked``, or the maximum when not given; a 422 naming the maximum when above it."""
    if asked is None:
        return maximum
    if asked > maximum:
        message = f"{field} {_shown(asked)} is above this api's maximum of {_shown(maximum)} ({setting})"
        fields = [{"loc": ["body", field], "msg": message, "type": "less_than_equal"}]
        raise ApiError(422, f"invalid request: body.{field}: {message}", "invalid_request", fields=fields)
    return asked


def _shown(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"
