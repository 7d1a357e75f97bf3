"""``POST /v1/sql`` against a real api over a real worker and broker: the master key only,
every statement ``spend-ledger sql`` refuses refused here too, row and time limits, and
each output format read back and agreeing with ``GET /v1/spend`` on usage posted over HTTP."""

from __future__ import annotations

import csv
import io
import secrets
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.ipc
import pytest

import tests.unit.test_readonly_sql as sandbox_tests
from ledger.broker import EmbeddedBroker
from tests.integration.builders import until
from tests.integration.conftest import ApiProcess, Ledger
from tests.stores import lake_at

MASTER = "sk-sql-master-" + secrets.token_urlsafe(12)
INGEST = "sk-sql-ingest-" + secrets.token_urlsafe(12)
AS_MASTER = {"authorization": f"Bearer {MASTER}"}
TIMEOUT_S = 30.0
ROWS_MAX = 10_000  # SPEND_LEDGER_SQL_ROWS_MAX's default
ARROW = "application/vnd.apache.arrow.stream"
# The sandbox's own refusal cases (tests/unit/test_readonly_sql.py), each sent over HTTP.
REFUSED: list[tuple[str, str]] = list(
    sandbox_tests.test_a_statement_that_writes_reads_files_attaches_or_loads_is_refused.pytestmark[0].args[1]
)
# 99 calls just under the largest reported cost: the sum (9,899,913,222,222,111 nanos) is
# odd and past 2**53, so a float on the way would round it; and five calls of 7 nanos.
BIG_COST_USD, BIG_COST_NANOS, BIG_CALLS = "99999.123456789", 99_999_123_456_789, 99
SMALL_COST_USD, SMALL_COST_NANOS, SMALL_CALLS = "0.000000007", 7, 5
BY_MODEL = {
    "gpt-4o": (BIG_COST_NANOS * BIG_CALLS, BIG_CALLS),
    "gpt-4o-mini": (SMALL_COST_NANOS * SMALL_CALLS, SMALL_CALLS),
}


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, ApiProcess]]:
    """One worker and one api with both keys; reported costs are trusted, so each call costs what it says."""
    folder = tmp_path_factory.mktemp("sql-api")
    ledger = Ledger(broker, folder, trust_reported_cost="true")
    ledger.start_worker()
    api = ledger.start_api(lake_at(folder), master_key=MASTER, ingest_key=INGEST)
    yield ledger, api
    ledger.stop_all()


@pytest.fixture(scope="module")
def team(stack: tuple[Ledger, ApiProcess]) -> str:
    """A team with calls on two models, posted over HTTP and projected into the store."""
    _, api = stack
    team = f"sql-{uuid.uuid4().hex[:8]}"
    events = [
        {"event_id": f"{team}-big-{n}", "model": "gpt-4o", "team_id": team, "user_id": "ana",
         "reported_cost": BIG_COST_USD, "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
        for n in range(BIG_CALLS)
    ] + [
        {"event_id": f"{team}-small-{n}", "model": "gpt-4o-mini", "team_id": team, "user_id": "ben",
         "reported_cost": SMALL_COST_USD, "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        for n in range(SMALL_CALLS)
    ]  # fmt: skip
    posted = httpx.post(f"{api.url}/v1/usage", json={"events": events}, headers=AS_MASTER, timeout=TIMEOUT_S)
    assert posted.status_code == 202, posted.text
    until(
        lambda: stored_entries(api, team),
        lambda count: count == len(events),
        "every call projected into the store",
    )
    return team


def stored_entries(api: ApiProcess, team: str) -> int | None:
    """The team's entries in the store, counted over ``POST /v1/sql``; None before the
    projector's first commit made the tables."""
    query = f"SELECT count(*) FROM ledger_entries WHERE list_contains(scope_keys, 'team:{team}')"
    answer = sql(api, {"query": query})
    return int(answer.json()["rows"][0][0]) if answer.status_code == 200 else None


def spend_by_model(api: ApiProcess, team: str) -> dict[str, tuple[int, int]]:
    """``GET /v1/spend`` for ``team`` by model: {model: (spend_nanos, entry_count)}."""
    params = [("team", team), ("group_by", "model")]
    answer = httpx.get(f"{api.url}/v1/spend", params=params, headers=AS_MASTER, timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    return {row["groups"]["model"]: (row["spend_nanos"], row["entry_count"]) for row in answer.json()["rows"]}


def sql(api: ApiProcess, body: dict[str, Any], accept: str | None = None, key: str | None = MASTER) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    if accept is not None:
        headers["accept"] = accept
    return httpx.post(f"{api.url}/v1/sql", json=body, headers=headers, timeout=TIMEOUT_S)


def by_model_query(team: str) -> str:
    return (
        "SELECT model, sum(cost_nanos) AS spend_nanos, count(*) AS entries FROM ledger_entries "
        f"WHERE list_contains(scope_keys, 'team:{team}') GROUP BY model ORDER BY model"
    )


def error_of(answer: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return error


def test_no_key_is_401_the_ingest_key_403_and_the_master_key_runs_the_statement(stack):
    _, api = stack
    query = {"query": "SELECT 42 AS answer"}
    missing = sql(api, query, key=None)
    assert (missing.status_code, error_of(missing)["type"]) == (401, "unauthorized")
    ingest = sql(api, query, key=INGEST)
    assert (ingest.status_code, error_of(ingest)["type"]) == (403, "forbidden")
    assert "needs the master key" in error_of(ingest)["message"]
    wrong = sql(api, query, key="sk-wrong-" + secrets.token_urlsafe(12))
    assert wrong.status_code == 403
    answered = sql(api, query)
    assert answered.status_code == 200, answered.text
    assert answered.json() == {
        "columns": ["answer"],
        "column_types": ["INTEGER"],
        "rows": [[42]],
        "row_count": 1,
        "truncated": False,
        "row_limit": ROWS_MAX,
    }


def test_json_keeps_a_hugeint_sum_past_two_to_the_53_exact(stack, team):
    _, api = stack
    answer = sql(api, {"query": by_model_query(team)})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    result = answer.json()
    assert result["column_types"] == ["VARCHAR", "HUGEINT", "BIGINT"]
    big_total = BIG_COST_NANOS * BIG_CALLS
    assert big_total > 2**53
    assert float(big_total) != big_total
    assert result["rows"] == [["gpt-4o", big_total, BIG_CALLS], ["gpt-4o-mini", 35, 5]]
    assert str(big_total) in answer.text  # written as the integer, not as a float


def test_csv_has_a_header_row_then_the_rows(stack, team):
    _, api = stack
    answer = sql(api, {"query": by_model_query(team)}, accept="text/csv")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["spend-ledger-truncated"] == "false"
    header, *rows = list(csv.reader(io.StringIO(answer.text)))
    assert header == ["model", "spend_nanos", "entries"]
    assert {model: (int(nanos), int(count)) for model, nanos, count in rows} == BY_MODEL


def test_an_arrow_stream_reads_back_with_pyarrow(stack, team):
    _, api = stack
    answer = sql(api, {"query": by_model_query(team)}, accept=ARROW)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == ARROW
    table = pa.ipc.open_stream(answer.content).read_all()
    assert table.column_names == ["model", "spend_nanos", "entries"]
    assert table.schema.field("spend_nanos").type == pa.decimal128(38, 0)
    assert table.schema.field("entries").type == pa.int64()
    assert table.schema.metadata[b"spend_ledger.truncated"] == b"false"
    rows = table.to_pylist()
    assert {row["model"]: (int(row["spend_nanos"]), row["entries"]) for row in rows} == BY_MODEL


def test_each_format_agrees_with_get_spend_on_the_same_usage(stack, team):
    _, api = stack
    spend = spend_by_model(api, team)
    assert spend == BY_MODEL
    as_json = sql(api, {"query": by_model_query(team)}).json()["rows"]
    assert {model: (nanos, count) for model, nanos, count in as_json} == spend
    _, *as_csv = list(csv.reader(io.StringIO(sql(api, {"query": by_model_query(team)}, accept="text/csv").text)))
    assert {model: (int(nanos), int(count)) for model, nanos, count in as_csv} == spend
    as_arrow = pa.ipc.open_stream(sql(api, {"query": by_model_query(team)}, accept=ARROW).content).read_all()
    assert {row["model"]: (int(row["spend_nanos"]), row["entries"]) for row in as_arrow.to_pylist()} == spend


def test_every_format_says_when_rows_were_cut_at_the_row_limit(stack):
    _, api = stack
    body = {"query": "SELECT range AS n FROM range(25) ORDER BY n", "row_limit": 10}
    as_json = sql(api, body)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["rows"] == [[n] for n in range(10)]
    assert (as_json.json()["truncated"], as_json.json()["row_count"], as_json.json()["row_limit"]) == (True, 10, 10)
    assert as_json.headers["spend-ledger-truncated"] == "true"
    as_csv = sql(api, body, accept="text/csv")
    assert as_csv.headers["spend-ledger-truncated"] == "true"
    assert len(list(csv.reader(io.StringIO(as_csv.text)))) == 11
    as_arrow = sql(api, body, accept=ARROW)
    table = pa.ipc.open_stream(as_arrow.content).read_all()
    assert (table.num_rows, table.schema.metadata[b"spend_ledger.truncated"]) == (10, b"true")
    whole = sql(api, {"query": "SELECT range FROM range(10)", "row_limit": 10})
    assert (whole.json()["truncated"], whole.headers["spend-ledger-truncated"]) == (False, "false")
    at_most = sql(api, {"query": f"SELECT range FROM range({ROWS_MAX + 5})"})
    assert (at_most.json()["row_count"], at_most.json()["truncated"]) == (ROWS_MAX, True)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"query": "SELECT 1", "row_limit": ROWS_MAX + 1}, "row_limit", f"above this api's maximum of {ROWS_MAX}"),
        ({"query": "SELECT 1", "row_limit": 1_000_001}, "row_limit", "less than or equal to 1000000"),
        ({"query": "SELECT 1", "row_limit": 0}, "row_limit", "greater than or equal to 1"),
        ({"query": "SELECT 1", "timeout_s": 31}, "timeout_s", "above this api's maximum of 30"),
        ({"query": "SELECT 1", "timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"query": ""}, "query", "at least 1 character"),
        ({"query": "SELECT 1" + " " * 100_000}, "query", "at most 100000 characters"),
        ({"query": "SELECT 1", "limit": 5}, "limit", "Extra inputs are not permitted"),
        ({"row_limit": 5}, "query", "Field required"),
    ],
)
def test_a_limit_above_the_maximum_or_a_bad_field_is_a_422_naming_it(stack, body, field, message):
    _, api = stack
    answer = sql(api, body)
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert error["type"] == "invalid_request"
    assert [entry["loc"] for entry in error["fields"]] == [["body", field]]
    assert message in error["fields"][0]["msg"]


def test_a_statement_past_its_time_limit_is_stopped_with_a_408(stack):
    _, api = stack
    started = time.monotonic()
    answer = sql(api, {"query": "SELECT count(*) FROM range(1000000000000) AS a", "timeout_s": 0.3})
    assert answer.status_code == 408, answer.text
    assert error_of(answer) == {
        "type": "statement_timed_out",
        "message": "the statement ran longer than 0.3 s and was stopped",
        "timeout_s": 0.3,
    }
    assert time.monotonic() - started < 10
    assert sql(api, {"query": "SELECT 1 AS still_here"}).json()["rows"] == [[1]]  # the api answers on


@pytest.mark.parametrize(("statement", "headline"), REFUSED)
def test_every_statement_spend_ledger_sql_refuses_is_a_400_naming_why(stack, tmp_path, statement, headline):
    _, api = stack
    (tmp_path / "in.csv").write_text("a\n1\n")
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    (tmp_path / "in.json").write_text('[{"a": 1}]')
    files_before = sandbox_tests.folder_state(tmp_path)
    answer = sql(api, {"query": statement.format(dir=tmp_path)})
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["type"] == "statement_not_allowed"
    assert error["message"].startswith(headline)
    assert "root:" not in answer.text  # nothing of /etc/passwd came back
    assert sandbox_tests.folder_state(tmp_path) == files_before


def test_the_refused_statements_left_the_store_as_it_was(stack, team):
    """Run after the refusals (file order): the team's entries are all still there, once."""
    _, api = stack
    answer = sql(api, {"query": f"SELECT count(*) FROM ledger_entries WHERE list_contains(scope_keys, 'team:{team}')"})
    assert answer.json()["rows"] == [[BIG_CALLS + SMALL_CALLS]]


@pytest.mark.parametrize(
    "statement",
    ["SELECT 1; DELETE FROM ledger_entries", "DELETE FROM ledger_entries; SELECT 1", "SELECT 1; SELECT 2"],
)
def test_more_than_one_statement_is_refused_whole(stack, statement):
    _, api = stack
    answer = sql(api, {"query": statement})
    assert (answer.status_code, error_of(answer)["type"]) == (400, "statement_not_allowed")
    assert error_of(answer)["message"].startswith("exactly one SQL statement is allowed, got 2")


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("SELEC 1", 'DuckDB could not parse the statement: Parser Error: syntax error at or near "SELEC"'),
        ("SELECT * FROM nope", "DuckDB could not run the statement. DuckDB said: Catalog Error: Table with name nope"),
        ("SELECT getenv('SPEND_LEDGER_MASTER_KEY')", "Scalar Function with name getenv does not exist"),
    ],
)
def test_invalid_sql_is_a_400_in_duckdbs_words(stack, statement, said):
    _, api = stack
    answer = sql(api, {"query": statement})
    assert (answer.status_code, error_of(answer)["type"]) == (400, "invalid_statement")
    assert said in error_of(answer)["message"]
    assert MASTER not in answer.text


def test_json_writes_each_type_exactly(stack):
    _, api = stack
    query = (
        "SELECT 170141183460469231731687303715884105727::HUGEINT AS widest, 1.25::DECIMAL(10, 3) AS price, "
        "DATE '2025-11-02' AS day, TIMESTAMPTZ '2025-11-02 06:30:00+00' AS at, TIME '01:02:03' AS clock, "
        "INTERVAL 90 MINUTE AS took, '\\x00\\xff'::BLOB AS raw, [1, 2, NULL] AS list, "
        "{'team': 'ml', 'nanos': 7} AS struct, NULL::VARCHAR AS nothing, true AS yes, 0.5::DOUBLE AS half"
    )
    answer = sql(api, {"query": query})
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["rows"]
    assert row == [
        2**127 - 1,
        "1.250",
        "2025-11-02",
        "2025-11-02T06:30:00+00:00",
        "01:02:03",
        "P0DT5400S",
        "AP8=",
        [1, 2, None],
        {"team": "ml", "nanos": 7},
        None,
        True,
        0.5,
    ]
    as_csv = sql(api, {"query": query}, accept="text/csv")
    _, csv_row = list(csv.reader(io.StringIO(as_csv.text)))
    assert csv_row[0] == str(2**127 - 1)
    assert csv_row[7:11] == ["[1,2,null]", '{"team":"ml","nanos":7}', "", "true"]
    as_arrow = pa.ipc.open_stream(sql(api, {"query": query}, accept=ARROW).content).read_all()
    assert as_arrow.column("list").to_pylist() == [[1, 2, None]]
    assert as_arrow.column("price").to_pylist()[0] == Decimal("1.250")


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("text/csv;q=0.5, application/vnd.apache.arrow.stream", ARROW),
        ("text/html, text/csv;q=0.9", "text/csv"),
        ("application/json;q=0.1, text/csv", "text/csv"),
    ],
)
def test_accept_picks_the_format_by_quality(stack, accept, content_type):
    _, api = stack
    answer = sql(api, {"query": "SELECT 1 AS one"}, accept=accept)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].split(";")[0] == content_type


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "text/csv;q=0", "image/*"])
def test_an_accept_it_cannot_answer_is_a_406_listing_the_three(stack, accept):
    _, api = stack
    answer = sql(api, {"query": "SELECT 1"}, accept=accept)
    assert answer.status_code == 406, answer.text
    error = error_of(answer)
    assert error["type"] == "not_acceptable"
    for offered in ("application/json", "text/csv", ARROW):
        assert offered in error["message"]


def test_the_route_is_in_the_openapi_spec_with_its_formats_and_errors(stack):
    _, api = stack
    spec = httpx.get(f"{api.url}/openapi.json", timeout=TIMEOUT_S).json()
    operation = spec["paths"]["/v1/sql"]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/csv", ARROW}
    assert {"400", "401", "403", "406", "408", "422", "503"} <= set(operation["responses"])
    assert "Spend-Ledger-Truncated" in operation["responses"]["200"]["headers"]
