"""The bad-input corpus (tests/bad_inputs.py) through the parsers, in process: the worker's
decode and validate stages, the store's decoder, and the api's body parser and route.
The same corpus runs against real processes in tests/integration/test_bad_inputs.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from ledger.api.app import create_app
from ledger.api.ingest import BODY_BYTES_MAX, BodyError, parse_usage_body
from ledger.api.schemas import BUDGET_USD_MAX, BudgetRequest
from ledger.domain.events import UsageEvent
from ledger.domain.wire import MESSAGE_BYTES_MAX, Rejected, decode_usage_message, duplicate_keys
from ledger.settings import Settings
from tests.bad_inputs import (
    CORPUS,
    HTTP_KINDS,
    KAFKA_KINDS,
    BadInput,
    assert_refused_as,
    event,
    genai_prices_book_cached,
    sized,
    text,
    worker_decode,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ROUTE_KINDS = {"content_type_text_plain", "content_type_form", "body_over_api_limit"}


def worker_stages(value: bytes) -> tuple[list[UsageEvent], list[Rejected]]:
    return worker_decode(value, genai_prices_book_cached())


def test_the_corpus_holds_at_least_thirty_kinds_through_each_channel():
    assert len(CORPUS) >= 30
    assert len(KAFKA_KINDS) >= 30
    assert len(HTTP_KINDS) >= 30


@pytest.mark.parametrize("kind", KAFKA_KINDS, ids=lambda kind: kind.name)
def test_the_worker_refuses_each_kind_with_its_stage_reason_and_original_bytes(kind: BadInput):
    assert kind.letter is not None
    charged, rejected = worker_stages(kind.body)
    assert [(r.stage, r.reason) for r in rejected] == [(kind.letter.stage, kind.letter.reason)]
    assert kind.letter.detail in rejected[0].detail
    assert rejected[0].original == kind.original
    assert [e.event_id for e in charged] == [e["event_id"] for e in kind.good_events]


@pytest.mark.parametrize("kind", KAFKA_KINDS, ids=lambda kind: kind.name)
def test_the_store_decodes_the_same_events_as_the_worker(kind: BadInput):
    # The store's fast path (pydantic straight from bytes) must refuse what the worker does,
    # or the store would hold an event that live never charged.
    events, rejected = decode_usage_message(kind.body)
    validated = [e.event_id for e in events]
    expected = [e["event_id"] for e in kind.good_events]
    if kind.letter is not None and kind.letter.reason == "unpriced":
        expected = [orjson.loads(kind.body)["event_id"]]  # stored, charged by a replay once priced
    assert validated == expected
    assert len(rejected) == (0 if kind.letter is not None and kind.letter.reason == "unpriced" else 1)


@pytest.mark.parametrize("kind", [k for k in HTTP_KINDS if k.name not in ROUTE_KINDS], ids=lambda kind: kind.name)
def test_the_api_refuses_each_kind_naming_what_is_wrong(kind: BadInput):
    assert kind.refusal is not None
    with pytest.raises(BodyError) as caught:
        parse_usage_body(kind.body, NOW)
    error = {"message": caught.value.message, "type": caught.value.kind, "fields": caught.value.fields}
    assert_refused_as(kind.refusal, caught.value.status, error)


# -- the route itself, in process: content type and body size ------------------------------


def post(content: Any, headers: dict[str, str]) -> httpx.Response:
    app = create_app(Settings())  # no lifespan: these refusals come before anything is published

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/usage", content=content, headers=headers)

    return asyncio.run(send())


@pytest.mark.parametrize("name", ["content_type_text_plain", "content_type_form"])
def test_a_wrong_content_type_is_refused_with_415(name: str):
    kind = next(k for k in CORPUS if k.name == name)
    assert kind.refusal is not None
    response = post(kind.body, {"content-type": kind.content_type})
    assert_refused_as(kind.refusal, response.status_code, response.json()["error"])


def test_a_body_declared_over_the_limit_is_refused_before_it_is_read():
    # The declared length alone decides: only one byte follows it.
    response = post(b"{", {"content-type": "application/json", "content-length": str(BODY_BYTES_MAX + 1)})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == f"request body of {BODY_BYTES_MAX + 1} bytes is over {BODY_BYTES_MAX}"


def test_a_streamed_body_is_refused_once_it_passes_the_limit():
    chunk = b" " * (1024 * 1024)
    chunks_max = BODY_BYTES_MAX // len(chunk) + 64
    sent: list[int] = []

    async def body() -> Any:
        for _ in range(chunks_max):
            sent.append(len(chunk))
            yield chunk

    response = post(body(), {"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == {"message": f"request body is over {BODY_BYTES_MAX} bytes", "type": "too_large"}
    assert sum(sent) == BODY_BYTES_MAX + len(chunk)  # read up to the chunk that passed the limit, no further


# -- edges of the wire limits and the duplicate-key check ------------------------------------


def test_a_message_at_the_wire_limit_is_read_and_one_byte_more_is_not():
    at_limit = sized("at-limit", MESSAGE_BYTES_MAX)
    assert len(at_limit) == MESSAGE_BYTES_MAX
    _, (refused,) = worker_stages(at_limit)
    assert (refused.reason, refused.detail) == ("invalid_usage", "model: String should have at most 256 characters")
    _, (refused,) = worker_stages(sized("over-limit", MESSAGE_BYTES_MAX + 1))
    assert refused.reason == "too_large"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"a": 1, "a": 1}', [("a",)]),  # even the same value twice: refused, not guessed at
        (b'{"a": {"b": 1, "c": "x:y", "b": 2}}', [("a", "b")]),
        (b'[{"x": 1}, {"y": [{"z": 1, "z": 2}]}]', [(1, "y", 0, "z")]),
        (b'{"a": 1, "b": {"a": 1}, "c": [{"a": 1}, {"a": 1}]}', []),  # the same key in different objects
        (b'{"t": "09:00:00", "u": "\\u003a", "v": {"k": "a:b:c"}}', []),  # colons in strings, one escaped
        (b'{"k\\u003a": 1, "k:": 2}', [("k:",)]),  # an escaped colon in a key, repeated
        (b'{"a": 1, "a": 2, "b": {"c": 1, "c": 2}}', [("a",), ("b", "c")]),
    ],
)
def test_duplicate_keys_are_found_where_they_are(raw: bytes, where: list[tuple[Any, ...]]):
    assert duplicate_keys(raw, orjson.loads(raw)) == where


def test_a_duplicate_key_names_no_event_id_when_the_id_itself_repeats():
    _, (refused,) = worker_stages(
        text(event("x")).replace(b'"event_id":"bad-x"', b'"event_id":"bad-x","event_id":"bad-y"')
    )
    assert (refused.reason, refused.event_id) == ("duplicate_key", None)
    _, (refused,) = worker_stages(text(event("x")).replace(b'"model":', b'"model":"a","model":'))
    assert (refused.reason, refused.event_id) == ("duplicate_key", "bad-x")


def test_a_huge_event_id_is_not_copied_into_the_dead_letter_beside_the_original():
    _, (refused,) = worker_stages(text(event("x", event_id="e" * 1_000)))
    assert refused.reason == "invalid_usage"
    assert refused.event_id is None
    _, (refused,) = worker_stages(text(event("x", model=3)))
    assert refused.event_id == "bad-x"


# -- found by fuzzing the api from its spec (tests/integration/test_api_fuzz.py) --------------


def test_a_budget_whose_nanos_would_not_fit_64_bits_is_refused():
    # One budget of 1e10 USD (1e19 nanos) made every later POST /v1/replay answer 500.
    at_limit = BudgetRequest(max_budget=BUDGET_USD_MAX, model_max_budget={"gpt-4o": BUDGET_USD_MAX})
    assert all(spec.max_budget_nanos is not None and spec.max_budget_nanos < 2**63 for spec in at_limit.specs())
    for fields in (
        {"max_budget": "10000000000"},
        {"soft_budget": BUDGET_USD_MAX + 1},
        {"model_max_budget": {"gpt-4o": {"budget_limit": BUDGET_USD_MAX + 1}}},
    ):
        with pytest.raises(ValidationError, match="less than or equal to 1000000000"):
            BudgetRequest.model_validate(fields)


def test_the_spec_documents_every_error_answer_in_its_one_shape():
    spec = create_app(Settings()).openapi()
    components = spec["components"]["schemas"]
    assert "HTTPValidationError" not in components  # the api never answers in that shape
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = {status: answer for status, answer in responses.items() if status >= "400"}
            for answer in errors.values():
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorView"}
            if path not in ("/healthz", "/readyz", "/metrics"):
                assert {"401", "403"} <= set(errors), (method, path)
            if "requestBody" in operation:
                assert {"400", "422"} <= set(errors), (method, path)
            if "{" in path:
                assert "404" in errors, (method, path)


def test_the_spec_shows_what_post_usage_takes_over_http():
    spec = create_app(Settings()).openapi()
    components = spec["components"]["schemas"]
    assert "occurred_at" in components["UsageEvent"]["required"]  # on the wire
    assert "occurred_at" not in components["UsageEventIn"]["required"]  # over HTTP, stamped when left out
    assert components["UsageBatchIn"]["required"] == ["events"]
    body = spec["paths"]["/v1/usage"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/UsageBatchIn"} in body["anyOf"]
