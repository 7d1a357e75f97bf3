"""An ad-hoc SQL result (``ledger.store.sql.SqlResult``) in the three formats ``POST /v1/sql``
answers in: JSON, CSV and an Arrow IPC stream. Plain functions of the result, no I/O.

JSON keeps every value exact: integers stay integers however wide (a ``HUGEINT`` sum of
nanos is past 2**63 after enough spend, and a float would round it), ``DECIMAL`` is its
text, times are ISO 8601, bytes are base64, lists and structs are JSON arrays and objects.
CSV writes the same text, a list or struct as its JSON. Arrow gets a column type from
DuckDB's type name where one maps exactly (``HUGEINT`` is ``decimal128(38, 0)``, as DuckDB's
own Arrow export has it), else what pyarrow infers, else the JSON text.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import orjson
import pyarrow as pa

from ledger.store.sql import SqlResult

SqlFormat = Literal["json", "csv", "arrow"]
MEDIA_TYPES: dict[SqlFormat, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
}
_ACCEPTED: dict[str, SqlFormat] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "*/*": "json",
    "application/*": "json",
    "text/*": "csv",
}
ACCEPT_CHARS_MAX = 1_000  # a longer Accept header is not one a client means


def negotiated_format(accept: str | None) -> SqlFormat | None:
    """The format an ``Accept`` header asks for (highest quality first, then in order); JSON
    when there is none; None when it names none of the three."""
    if accept is None or not accept.strip():
        return "json"
    if len(accept) > ACCEPT_CHARS_MAX:
        return None
    offers: list[tuple[float, int, SqlFormat]] = []
    for position, item in enumerate(accept.split(",")):
        media, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        found = _ACCEPTED.get(media.lower())
        if found is not None and math.isfinite(quality) and quality > 0:
            offers.append((-quality, position, found))
    return min(offers)[2] if offers else None


def json_value(value: Any) -> Any:
    """``value`` as a JSON value that loses nothing: see the module docstring."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # 'nan', 'inf', '-inf': JSON has none
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return str(value)


def _iso_duration(value: timedelta) -> str:
    """An ISO 8601 duration: ``P1DT3661.5S`` (DuckDB's INTERVAL comes back as a timedelta)."""
    seconds = Decimal(value.seconds) + Decimal(value.microseconds) / 1_000_000
    return f"P{value.days}DT{seconds.normalize():f}S"


def result_json(result: SqlResult) -> bytes:
    """``{"columns", "column_types", "rows", "row_count", "truncated", "row_limit"}``."""
    body = {
        "columns": list(result.columns),
        "column_types": list(result.column_types),
        "rows": [[json_value(value) for value in row] for row in result.rows],
        "row_count": len(result.rows),
        "truncated": result.truncated,
        "row_limit": result.row_limit,
    }
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # an integer past 64 bits: the standard library writes it whole
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _csv_text(value: Any) -> str:
    shown = json_value(value)
    if shown is None:
        return ""
    if isinstance(shown, bool):
        return "true" if shown else "false"
    if isinstance(shown, list | dict):
        return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))
    return str(shown)


def result_csv(result: SqlResult) -> bytes:
    """A header row of column names, then a row per result row (NULL is an empty field)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(result.columns)
    writer.writerows([_csv_text(value) for value in row] for row in result.rows)
    return text.getvalue().encode()


_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")
_ARROW_TYPES: dict[str, pa.DataType] = {
    "BOOLEAN": pa.bool_(),
    "TINYINT": pa.int8(),
    "SMALLINT": pa.int16(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "UTINYINT": pa.uint8(),
    "USMALLINT": pa.uint16(),
    "UINTEGER": pa.uint32(),
    "UBIGINT": pa.uint64(),
    "HUGEINT": pa.decimal128(38, 0),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "BLOB": pa.binary(),
    "DATE": pa.date32(),
    "TIME": pa.time64("us"),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    "TIMESTAMP_S": pa.timestamp("s"),
    "TIMESTAMP_MS": pa.timestamp("ms"),
    "TIMESTAMP_NS": pa.timestamp("ns"),
    "INTERVAL": pa.duration("us"),
    "UUID": pa.string(),
    "JSON": pa.string(),
}


def _arrow_type(duckdb_type: str) -> pa.DataType | None:
    decimal = _DECIMAL.fullmatch(duckdb_type)
    if decimal is not None:
        return pa.decimal128(int(decimal[1]), int(decimal[2]))
    return _ARROW_TYPES.get(duckdb_type)


def _arrow_column(values: Sequence[Any], duckdb_type: str) -> pa.Array:
    """The column as DuckDB's type maps to Arrow; else as inferred; else as JSON text."""
    wanted = _arrow_type(duckdb_type)
    if wanted is not None:
        if pa.types.is_decimal(wanted):
            values = [None if value is None else Decimal(value) for value in values]
        elif pa.types.is_string(wanted):
            values = [None if value is None else str(value) for value in values]
        try:
            return pa.array(values, type=wanted)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass  # e.g. a UHUGEINT past 38 digits: inferred or text below
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return pa.array([None if value is None else _csv_text(value) for value in values], type=pa.string())


def result_arrow(result: SqlResult) -> bytes:
    """An Arrow IPC stream of one record batch; DuckDB's column types and the truncation
    ride along as schema metadata."""
    columns = list(zip(*result.rows, strict=True)) if result.rows else [() for _ in result.columns]
    arrays = [
        _arrow_column(values, duckdb_type) for values, duckdb_type in zip(columns, result.column_types, strict=True)
    ]
    metadata = {
        "spend_ledger.column_types": json.dumps(list(result.column_types)),
        "spend_ledger.truncated": "true" if result.truncated else "false",
        "spend_ledger.row_limit": str(result.row_limit),
    }
    fields = [pa.field(name, array.type) for name, array in zip(result.columns, arrays, strict=True)]
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def encoded(result: SqlResult, result_format: SqlFormat) -> bytes:
    """The result's bytes in ``result_format``."""
    if result_format == "csv":
        return result_csv(result)
    if result_format == "arrow":
        return result_arrow(result)
    return result_json(result)
