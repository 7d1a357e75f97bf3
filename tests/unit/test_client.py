"""The api client's requests and error answers, against httpx's in-process mock transport
(the real api is driven in tests/integration/test_cli_client.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ledger.broker import free_port
from ledger.cli.main import app
from ledger.client import (
    AsyncLedgerClient,
    BudgetExceeded,
    LedgerApiError,
    LedgerClient,
    LedgerConnectionError,
    ModelLimit,
    PublishFailed,
    usage_bodies,
)
from ledger.settings import Settings

Handler = Callable[[httpx.Request], httpx.Response]
EXCEEDED = "Budget has been exceeded! Current cost: 0.0002, Max budget: 0.0001"


def client(handler: Handler, key: str | None = "sk-master-0123456789") -> LedgerClient:
    return LedgerClient("http://ledger.test/", key, transport=httpx.MockTransport(handler))


def budget_answer(scope_key: str = "team:ml") -> dict[str, object]:
    kind, _, scope_id = scope_key.partition(":")
    return {"scope_key": scope_key, "kind": kind, "id": scope_id, "limits": [], "command_id": "c", "applied": True}


def event(event_id: str, text: str = "") -> dict[str, object]:
    return {"event_id": event_id, "model": "gpt-4o", "usage": {"prompt_tokens": 1}, "metadata": {"note": text}}


def test_set_budget_sends_exact_decimal_text_and_the_bearer_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=budget_answer("team:a/b c"))

    written = client(handler).set_budget(
        "team",
        "a/b c",
        max_budget=Decimal("10.50"),
        soft_budget="0.000000001",
        budget_duration="1d",
        model_max_budget={"gpt-4o": 1, "o1": ModelLimit("2.25", "1h")},
        alias="ML",
    )
    assert written.applied
    request = seen[0]
    assert (request.method, request.url.raw_path) == ("PUT", b"/v1/budgets/team/a%2Fb%20c")
    assert request.headers["authorization"] == "Bearer sk-master-0123456789"
    assert json.loads(request.content) == {
        "max_budget": "10.5",
        "soft_budget": "0.000000001",
        "budget_duration": "1d",
        "model_max_budget": {"gpt-4o": "1", "o1": {"budget_limit": "2.25", "time_period": "1h"}},
        "alias": "ML",
    }


@pytest.mark.parametrize(
    ("amount", "error"),
    [(1.5, TypeError), (True, TypeError), ("0.0000000001", ValueError), ("ten", ValueError)],
)
def test_money_is_never_a_float_nor_finer_than_a_nano(amount: object, error: type[Exception]):
    never_called = client(lambda request: pytest.fail("nothing may be sent"))
    with pytest.raises(error):
        never_called.set_budget("team", "ml", max_budget=amount)  # type: ignore[arg-type]


def test_an_error_answer_becomes_a_typed_error_with_its_fields():
    fields = [{"loc": ["body", "max_budget"], "msg": "Input should be greater than or equal to 0", "type": "ge"}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422, json={"error": {"message": "invalid request", "type": "invalid_request", "fields": fields}}
        )

    with pytest.raises(LedgerApiError) as raised:
        client(handler).get_budget("team", "ml")
    assert (raised.value.status, raised.value.type, raised.value.fields) == (422, "invalid_request", fields)
    assert str(raised.value) == "invalid request (HTTP 422, invalid_request)"


def test_an_answer_that_is_not_the_apis_json_keeps_its_status_and_text():
    with pytest.raises(LedgerApiError) as raised:
        client(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")).list_budgets()
    assert (raised.value.status, raised.value.type) == (502, "http_error")
    assert "<html>Bad Gateway</html>" in raised.value.message


def test_402_is_an_answer_with_litellms_message_or_an_exception_when_asked():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params.get_list("tag") == ["a", "b"]
        body = {"error": {"message": EXCEEDED, "type": "budget_exceeded", "scope": "team:ml", "scopes": []}}
        return httpx.Response(402, json=body)

    answer = client(handler).check(team="ml", tags=["a", "b"], model="gpt-4o")
    assert (answer.allowed, answer.message, answer.scope, answer.model) == (False, EXCEEDED, "team:ml", "gpt-4o")
    with pytest.raises(BudgetExceeded) as raised:
        client(handler).check(team="ml", tags=["a", "b"], raise_if_exceeded=True)
    assert (raised.value.status, raised.value.scope, raised.value.message) == (402, "team:ml", EXCEEDED)


def test_publish_splits_by_events_and_bytes_and_keeps_the_order():
    bodies = list(usage_bodies([event(f"e{i}") for i in range(5)], events_max=2))
    assert [count for _, count in bodies] == [2, 2, 1]
    assert [e["event_id"] for body, _ in bodies for e in json.loads(body)["events"]] == [f"e{i}" for i in range(5)]
    big = [event(f"big{i}", "x" * 600) for i in range(4)]
    by_bytes = list(usage_bodies(big, bytes_max=1_500))
    assert [count for _, count in by_bytes] == [2, 2]
    assert all(len(body) <= 1_500 + 32 for body, _ in by_bytes)
    alone = list(usage_bodies([event("huge", "x" * 5_000)], bytes_max=1_000))
    assert [count for _, count in alone] == [1]  # one event larger than the target goes alone


def test_publish_reports_what_was_accepted_before_a_request_failed():
    def handler(request: httpx.Request) -> httpx.Response:
        ids = [e["event_id"] for e in json.loads(request.content)["events"]]
        if "e2" in ids:
            return httpx.Response(503, json={"error": {"message": "broker unavailable", "type": "unavailable"}})
        return httpx.Response(202, json={"accepted": len(ids), "event_ids": ids})

    progress: list[int] = []
    with pytest.raises(PublishFailed) as raised:
        client(handler).publish(
            [event(f"e{i}") for i in range(4)], events_per_request_max=2, on_request=progress.append
        )
    assert (raised.value.accepted, raised.value.event_ids, progress) == (2, ["e0", "e1"], [2])
    assert isinstance(raised.value.cause, LedgerApiError)
    with pytest.raises(LedgerApiError):  # nothing accepted: the plain error
        client(handler).publish([event("e2")])


def test_connection_refused_names_the_url_and_how_to_start_the_api():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LedgerConnectionError) as raised:
        LedgerClient(url).list_budgets()
    message = str(raised.value)
    assert url in message
    assert "`make run`" in message
    assert "`spend-ledger dev`" in message


def test_from_settings_takes_the_api_url_and_the_master_key():
    settings = Settings(api_url="http://10.0.0.5:9000", master_key="m" * 16, ingest_key="i" * 16)
    made = LedgerClient.from_settings(settings)
    assert made.base_url == "http://10.0.0.5:9000"
    assert made._http.headers["authorization"] == "Bearer " + "m" * 16
    only_ingest = LedgerClient.from_settings(Settings(ingest_key="i" * 16))
    assert only_ingest._http.headers["authorization"] == "Bearer " + "i" * 16


def test_the_async_client_makes_the_same_requests():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/budgets"
        assert request.url.params["kind"] == "team"
        return httpx.Response(200, json=[budget_answer()])

    async def run() -> list[str]:
        async with AsyncLedgerClient("http://ledger.test", transport=httpx.MockTransport(handler)) as async_client:
            return [budget.scope_key for budget in await async_client.list_budgets("team")]

    assert asyncio.run(run()) == ["team:ml"]


def test_cli_publish_refuses_bad_lines_before_reaching_for_the_api(tmp_path: Path):
    lines = tmp_path / "usage.jsonl"
    lines.write_text(json.dumps(event("ok")) + "\n[1, 2]\n" + json.dumps({"event_id": "x", "model": "m"}) + "\n")
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens: a request would fail differently
    result = CliRunner().invoke(app, ["publish", str(lines), "--url", url])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"{lines}:2: expected a JSON object (one usage event), got list" in output
    assert f"{lines}:3: event: Value error, an event needs usage, input_text/output_text, or reported_cost" in output
    assert "nothing was published" in output
    assert "cannot reach" not in output


def test_cli_without_a_running_api_exits_2_and_says_how_to_start_it():
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["budgets", "list", "--url", url], ["check", "--team", "ml", "--url", url]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        output = " ".join(result.output.split())
        assert f"cannot reach the spend-ledger api at {url}" in output
        assert "`make run`" in output
