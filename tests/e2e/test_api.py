"""The api end to end: a real `spend-ledger dev` stack (broker, worker, api processes),
driven over HTTP as a gateway, an admin and a LiteLLM BudgetManager would."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from aiokafka import TopicPartition

from ledger.domain.events import BATCH_EVENTS_MAX
from ledger.kafka import end_offsets
from ledger.settings import Settings
from ledger.topics import topic_names
from tests.e2e.waiting import until


def usage(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "model": "gpt-4o", "usage": {"prompt_tokens": 100, "completion_tokens": 20}, **fields}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def usage_topic_end(bootstrap_servers: str) -> int:
    """Records on the stack's ``usage`` topic, all partitions."""
    settings = Settings(kafka_bootstrap_servers=bootstrap_servers)
    topic = topic_names(settings.topic_prefix).usage

    async def read() -> int:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return sum((await end_offsets(settings, partitions)).values())

    return asyncio.run(read())


def test_litellm_team_walkthrough_second_check_is_refused(admin: httpx.Client):
    team = unique("team")
    created = admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 0.000000001, "budget_duration": "1d"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["max_budget_nanos"] == 1
    assert body["budget_duration"] == "1d"
    assert body["budget_reset_at"] is not None
    assert body["applied"] is True

    first = admin.get("/v1/check", params={"team": team, "model": "gpt-4o"})
    assert first.status_code == 200, first.text
    assert admin.post("/v1/usage", json=usage(unique("call"), team_id=team)).status_code == 202
    assert admin.post("/v1/usage", json=usage(unique("call"), team_id=team)).status_code == 202

    second = until(
        lambda: (r := admin.get("/v1/check", params={"team": team, "model": "gpt-4o"})).status_code == 402 and r,
        "the team to be over budget",
    )
    error = second.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["scope"] == f"team:{team}"
    assert error["message"].startswith("Budget has been exceeded! Current cost: ")
    assert error["message"].endswith(", Max budget: 0.000000001")


def test_metrics_show_the_teams_remaining_budget(admin: httpx.Client):
    team = unique("team")
    admin.put(f"/v1/budgets/team/{team}", json={"max_budget": "1", "budget_duration": "1d", "alias": "Metrics"})
    admin.post("/v1/usage", json=usage(unique("call"), team_id=team))
    expected_prefix = f'spend_ledger_remaining_budget_usd{{scope_kind="team",scope_id="{team}",alias="Metrics"}} 0.99'

    def remaining_line() -> str | None:
        text = admin.get("/metrics").text
        return next((line for line in text.splitlines() if line.startswith(expected_prefix)), None)

    line = until(remaining_line, "the team's remaining budget to drop below 1 USD")
    assert 0.99 < float(line.rsplit(" ", 1)[1]) < 1.0


def test_metrics_count_each_stored_alert_once_by_kind(admin: httpx.Client):
    def exceeded_alerts() -> int:
        text = admin.get("/metrics").text
        line = next(
            (line for line in text.splitlines() if line.startswith('spend_ledger_alerts_total{kind="exceeded"}')), None
        )
        return 0 if line is None else int(line.rsplit(" ", 1)[1])

    before = exceeded_alerts()
    team = unique("team")
    admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 0.000000001, "budget_duration": "1d"})
    for _ in range(3):  # three calls over the limit: one crossing, one alert
        assert admin.post("/v1/usage", json=usage(unique("call"), team_id=team)).status_code == 202

    def team_alerts() -> list:
        return admin.get("/v1/alerts", params={"scope": f"team:{team}"}).json()["alerts"]

    until(team_alerts, "the team's alert to be stored")
    assert [alert["kind"] for alert in team_alerts()] == ["exceeded"]
    assert exceeded_alerts() >= before + 1


def test_set_budget_and_get_budget_round_trip_in_litellms_shapes(admin: httpx.Client):
    user = unique("user")
    saved = admin.post(
        "/set_budget",
        json={
            "project_name": "walkthrough",
            "user_dict": {user: {"total_budget": 10.0, "current_cost": 0, "model_cost": {}, "duration": "daily"}},
        },
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["status"] == "success"

    def loaded() -> dict[str, Any] | None:
        answer = admin.post("/get_budget", json={"project_name": "walkthrough"}).json()
        assert answer["status"] == "success"
        return answer["data"].get(user)

    entry = until(loaded, "the saved user in get_budget")
    assert entry["total_budget"] == 10.0
    assert entry["current_cost"] == 0
    assert entry["duration"] == 1  # LiteLLM counts durations in days
    assert entry["duration_text"] == "daily"
    assert admin.get(f"/v1/budgets/user/{user}").json()["max_budget_nanos"] == 10_000_000_000


def test_budgets_can_be_listed_reset_and_deleted(admin: httpx.Client):
    team = unique("org/team")  # an id may hold a slash
    admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 5, "soft_budget": 4, "budget_duration": "monthly"})
    assert admin.get(f"/v1/budgets/team/{team}").json()["scope_key"] == f"team:{team}"
    listed = admin.get("/v1/budgets", params={"kind": "team"}).json()
    assert f"team:{team}" in {view["scope_key"] for view in listed}
    assert all(view["kind"] == "team" for view in listed)
    reset = admin.post(f"/v1/budgets/team/{team}/reset")
    assert reset.status_code == 200, reset.text
    deleted = admin.delete(f"/v1/budgets/team/{team}")
    assert deleted.status_code == 200
    assert deleted.json()["limits"] == []
    assert admin.delete(f"/v1/budgets/team/{team}").status_code == 404
    assert admin.post(f"/v1/budgets/team/{team}/reset").status_code == 404


def test_spend_alerts_and_replay_come_from_the_store(admin: httpx.Client):
    team = unique("team")
    admin.put(f"/v1/budgets/team/{team}", json={"max_budget": 0.000001, "budget_duration": "1d"})
    events = [usage(unique("call"), team_id=team, model=model) for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o")]
    assert admin.post("/v1/usage", json={"events": events}).json()["accepted"] == 3

    def team_rows() -> list[dict[str, Any]]:
        rows = admin.get("/v1/spend", params={"group_by": "team,model"}).json()["rows"]
        return [row for row in rows if row["groups"]["team"] == team]

    rows = until(lambda: len(team_rows()) == 2 and team_rows(), "spend by team and model")
    assert {row["groups"]["model"]: row["entry_count"] for row in rows} == {"gpt-4o": 2, "gpt-4o-mini": 1}
    alerts = until(
        lambda: admin.get("/v1/alerts", params={"scope": f"team:{team}", "kind": "exceeded"}).json()["alerts"],
        "the exceeded alert in the store",
    )
    assert len(alerts) == 1
    replayed = until(
        lambda: (r := admin.post("/v1/replay", json={"scope": [f"team:{team}"]}).json())["difference_count"] == 0 and r,
        "the replay to equal live state",
    )
    assert replayed["events"] >= 3


def test_bad_input_gets_a_clear_4xx_and_nothing_reaches_the_topic(admin: httpx.Client, stack_url: str, stack_broker):
    before = usage_topic_end(stack_broker)
    cases = [
        (admin.post("/v1/usage", content=b'{"event_id": "x"', headers={"content-type": "application/json"}), 400),
        (admin.post("/v1/usage", json=usage("x", usage={"prompt_tokens": "many"})), 422),
        (admin.post("/v1/usage", json={"events": [usage(f"x{i}") for i in range(BATCH_EVENTS_MAX + 1)]}), 422),
        (admin.post("/v1/usage", content=b"event_id=x", headers={"content-type": "text/plain"}), 415),
        (admin.post("/v1/usage", json={"events": [usage("ok"), usage("bad", model="")]}), 422),
        (admin.put("/v1/budgets/planet/mars", json={"max_budget": 1}), 422),
        (admin.put("/v1/budgets/team/x", json={"max_budget": "lots"}), 422),
        (admin.get("/v1/spend", params={"group_by": "planet"}), 422),
        (httpx.post(f"{stack_url}/v1/usage", json=usage("y")), 401),
        (httpx.post(f"{stack_url}/v1/usage", json=usage("y"), headers={"Authorization": "Bearer nope"}), 403),
        (httpx.put(f"{stack_url}/v1/budgets/team/x", json={"max_budget": 1}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        error = response.json()["error"]
        assert error["message"]
        assert error["type"]
    invalid = cases[1][0].json()["error"]
    assert invalid["fields"][0]["loc"] == ["usage", "prompt_tokens"]
    assert usage_topic_end(stack_broker) == before


def test_docs_and_openapi_load(stack_url: str):
    docs = httpx.get(f"{stack_url}/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text.lower()
    spec = httpx.get(f"{stack_url}/openapi.json").json()
    for path in ("/v1/usage", "/v1/check", "/v1/budgets/{kind}/{scope_id}", "/get_budget", "/set_budget", "/metrics"):
        assert path in spec["paths"]
    assert "UsageEvent" in spec["components"]["schemas"]


def test_a_query_parameter_that_takes_one_value_given_twice_is_a_field_error(admin: httpx.Client):
    # Frameworks keep the last value silently; ``limit=5&limit=x`` must not pass as either.
    for path, params in (
        ("/v1/admissions", [("limit", "5"), ("limit", "30.0")]),
        ("/v1/spend", [("group_by", "team"), ("from", "2026-01-01"), ("from", "2026-02-01")]),
        ("/v1/check", [("user", "u-1"), ("team", "t-1"), ("user", "u-2")]),
    ):
        answer = admin.get(path, params=params)
        assert answer.status_code == 422, (path, answer.text)
        (field,) = answer.json()["error"]["fields"]
        assert field["loc"] == ["query", params[-1][0]], (path, field)
        assert field["type"] == "repeated"
    # Parameters that take several values may be repeated; unknown ones are ignored as before.
    assert admin.get("/v1/spend", params=[("group_by", "team"), ("group_by", "model")]).status_code == 200
    assert admin.get("/v1/check", params=[("user", "u-1"), ("tag", "a"), ("tag", "b")]).status_code == 200
    assert admin.get("/v1/alerts", params=[("x", "1"), ("x", "2")]).status_code == 200
