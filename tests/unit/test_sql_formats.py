"""The formats of ``POST /v1/sql`` on plain results: no store, no api."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pyarrow as pa
import pyarrow.ipc
import pytest

from ledger.api.sql_formats import json_value, negotiated_format, result_arrow, result_csv, result_json
from ledger.store.sql import SqlResult

WIDE = 2**127 - 1  # HUGEINT's largest


def result(columns: tuple[str, ...], types: tuple[str, ...], *rows: tuple[object, ...]) -> SqlResult:
    return SqlResult(columns=columns, column_types=types, rows=rows, truncated=False, row_limit=10)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "json"),
        ("", "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("TEXT/CSV", "csv"),
        ("text/*", "csv"),
        ("application/vnd.apache.arrow.stream", "arrow"),
        ("text/html, application/vnd.apache.arrow.stream;q=0.2, text/csv;q=0.8", "csv"),
        ("text/csv, application/json", "csv"),
        ("text/csv;q=0, */*;q=0.1", "json"),
        ("text/csv;q=nan", None),
        ("text/html", None),
        ("application/json;q=0", None),
        ("text/csv," * 200, None),
    ],
)
def test_accept_picks_the_best_format_it_can_give_or_none(accept, chosen):
    assert negotiated_format(accept) == chosen


def test_json_values_lose_nothing():
    assert json_value(WIDE) == WIDE
    assert json_value(Decimal("1.250")) == "1.250"
    assert json_value(datetime(2025, 11, 2, 6, 30, tzinfo=UTC)) == "2025-11-02T06:30:00+00:00"
    assert json_value(date(2025, 11, 2)) == "2025-11-02"
    assert json_value(timedelta(days=1, seconds=61, microseconds=500_000)) == "P1DT61.5S"
    assert json_value(b"\x00\xff") == "AP8="
    assert json_value(UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_value({"a": [1, Decimal("2.5")]}) == {"a": [1, "2.5"]}
    assert json_value(float("nan")) == "nan"


def test_a_hugeint_past_64_bits_is_written_as_the_integer():
    answer = json.loads(result_json(result(("total",), ("HUGEINT",), (WIDE,))))
    assert answer["rows"] == [[WIDE]]
    assert answer["row_count"] == 1


def test_csv_writes_null_as_empty_and_nested_values_as_json():
    text = result_csv(
        result(
            ("n", "tags", "none", "yes"), ("INTEGER", "VARCHAR[]", "VARCHAR", "BOOLEAN"), (1, ["a", "b"], None, True)
        )
    )
    assert list(csv.reader(io.StringIO(text.decode()))) == [
        ["n", "tags", "none", "yes"],
        ["1", '["a","b"]', "", "true"],
    ]


def test_arrow_maps_duckdbs_types_and_falls_back_to_text():
    stream = result_arrow(
        result(
            ("total", "price", "at", "mixed", "empty"),
            ("HUGEINT", "DECIMAL(10,3)", "TIMESTAMP WITH TIME ZONE", "UNION(a INTEGER, b VARCHAR)", "VARCHAR"),
            (WIDE // 10**2, Decimal("1.250"), datetime(2025, 11, 2, tzinfo=UTC), 1, None),
            (None, None, None, "x", None),
        )
    )
    table = pa.ipc.open_stream(stream).read_all()
    assert table.schema.field("total").type == pa.decimal128(38, 0)
    assert table.column("total").to_pylist() == [Decimal(WIDE // 10**2), None]
    assert table.schema.field("price").type == pa.decimal128(10, 3)
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert table.column("mixed").to_pylist() == ["1", "x"]
    assert table.schema.metadata[b"spend_ledger.truncated"] == b"false"


def test_an_empty_result_keeps_its_columns_in_every_format():
    empty = result(("a", "b"), ("INTEGER", "VARCHAR"))
    assert json.loads(result_json(empty))["rows"] == []
    assert result_csv(empty) == b"a,b\r\n"
    table = pa.ipc.open_stream(result_arrow(empty)).read_all()
    assert (table.column_names, table.num_rows) == (["a", "b"], 0)
