"""Keys, against a real api process with a master key and an ingest key: every route the
app has needs a key unless it is on the short open list below, the ingest key opens only
the client routes and cannot change a budget, and no key (right or wrong) reaches a log
or an answer. Processes are started on 127.0.0.1 and stopped by pid."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from starlette.routing import Route

from ledger.api.app import create_app
from ledger.broker import EmbeddedBroker, free_port
from ledger.processes import ChildProcess
from ledger.settings import Settings
from tests.integration.builders import until, usage
from tests.integration.conftest import ApiProcess, Ledger
from tests.stores import lake_at, store_env

MASTER = "sk-master-" + secrets.token_urlsafe(18)
INGEST = "sk-ingest-" + secrets.token_urlsafe(18)
SASL_PASSWORD = "sasl-" + secrets.token_urlsafe(18)
# Wrong keys as they happen: a typo of the right one, one character short or long, the
# other case, the ingest key mistyped, and one that is nothing like either.
WRONG_KEYS = [
    MASTER[:-1] + ("A" if MASTER[-1] != "A" else "B"),
    MASTER[:-1],
    MASTER + "x",
    MASTER.swapcase(),
    INGEST[:-1] + ("A" if INGEST[-1] != "A" else "B"),
    "sk-wrong-" + secrets.token_urlsafe(18),
]
# An Authorization header that is not 'Bearer <key>': 401, whatever key it carries.
MALFORMED = [
    "Bearer",
    "Bearer:" + MASTER,
    "Bearer\t" + MASTER,
    "Basic " + base64.b64encode(f"admin:{MASTER}".encode()).decode(),
    "Token " + MASTER,
    MASTER,
]
# The routes anyone may call. Prometheus scrapes /metrics without credentials (see
# ledger/api/auth.py and the README's route table: scope ids and spend, never a key).
OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
# The routes the ingest key opens (ledger/api/auth.py); every other route is admin.
CLIENT_ROUTES = {
    ("POST", "/v1/usage"),
    ("GET", "/v1/check"),
    ("POST", "/v1/admit"),
    ("DELETE", "/v1/admit/{request_id}"),
}
PATH_VALUES = {"kind": "team", "scope_id": "security-probe", "request_id": "probe-request", "model": "gpt-4o-mini"}
TEAM_BUDGET = {"max_budget": "2.5", "soft_budget": "1", "budget_duration": "30d", "alias": "security"}
TIMEOUT_S = 30.0


def route_table() -> list[tuple[str, str]]:
    """(method, path) of every route of the real app, in its schema or not, HEAD left out
    (Starlette answers it as the GET beside it)."""
    app = create_app(Settings.model_construct())
    # Newer FastAPI keeps included routers as such; this walks them as its OpenAPI does.
    flatten = getattr(fastapi.routing, "iter_route_contexts", list)
    routes = list(flatten(app.routes))
    originals = [getattr(route, "original_route", route) for route in routes]
    assert all(isinstance(route, Route) for route in originals), "a mount or websocket would escape this list"
    return sorted(
        (method, str(route.path_format)) for route in routes for method in route.methods or () if method != "HEAD"
    )


ROUTES = route_table()
ADMIN_ROUTES = [route for route in ROUTES if route not in OPEN_ROUTES | CLIENT_ROUTES]
KEYED_ROUTES = [route for route in ROUTES if route not in OPEN_ROUTES]


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


def url_path(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda found: PATH_VALUES[found.group(1)], path)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_not_echoed(answer: httpx.Response, *keys: str) -> None:
    shown = answer.text + repr(dict(answer.headers))
    for key in keys:
        assert key not in shown, f"{answer.request.method} {answer.request.url.path} echoed a key"


@pytest.fixture(scope="module")
def secured(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, ApiProcess]]:
    """One ledger with a worker and an api holding a master key and an ingest key, with a
    team budget set by the master key and applied by the worker."""
    folder = tmp_path_factory.mktemp("security")
    ledger = Ledger(broker, folder)
    try:
        ledger.start_worker()
        api = ledger.start_api(lake_at(folder), master_key=MASTER, ingest_key=INGEST)
        with httpx.Client(base_url=api.url, headers=bearer(MASTER), timeout=TIMEOUT_S) as admin:
            assert admin.put("/v1/budgets/team/guarded", json=TEAM_BUDGET).status_code in (200, 202)
            until(lambda: admin.get("/v1/budgets/team/guarded").status_code, lambda status: status == 200, "budget")
        yield ledger, api
    finally:
        ledger.stop_all()


@pytest.fixture(scope="module")
def api_url(secured: tuple[Ledger, ApiProcess]) -> str:
    return secured[1].url


def test_the_route_table_is_what_the_process_serves_and_is_not_trivially_small(api_url):
    served = httpx.get(f"{api_url}/openapi.json", timeout=TIMEOUT_S).json()["paths"]
    documented = {(method.upper(), path) for path, item in served.items() for method in item}
    assert documented <= set(ROUTES)
    undocumented = set(ROUTES) - documented
    assert undocumented == {
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
    }
    assert set(ROUTES) >= OPEN_ROUTES
    assert set(ROUTES) >= CLIENT_ROUTES
    assert {("PUT", "/v1/budgets/{kind}/{scope_id}"), ("POST", "/v1/replay"), ("POST", "/set_budget")} <= set(
        ADMIN_ROUTES
    )
    assert len(ADMIN_ROUTES) >= 10


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_a_route_off_the_open_list_answers_401_without_a_key_or_with_a_malformed_header(api_url, route):
    method, path = route
    with httpx.Client(base_url=api_url, timeout=TIMEOUT_S) as client:
        answers = [client.request(method, url_path(path))]
        answers += [client.request(method, url_path(path), headers={"Authorization": h}) for h in MALFORMED]
        # A key anywhere but the Authorization header is no key.
        answers.append(client.request(method, url_path(path), params={"api_key": MASTER}))
        answers.append(client.request(method, url_path(path), headers={"X-API-Key": MASTER}))
    for answer in answers:
        assert answer.status_code == 401, (route, answer.request.headers.get("authorization"), answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["type"] == "unauthorized"
        assert_not_echoed(answer, MASTER)


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_a_route_off_the_open_list_answers_403_to_a_wrong_key(api_url, route):
    method, path = route
    with httpx.Client(base_url=api_url, timeout=TIMEOUT_S) as client:
        for key in WRONG_KEYS:
            answer = client.request(method, url_path(path), headers=bearer(key))
            assert answer.status_code == 403, (route, key, answer.text)
            assert answer.json()["error"] == {"message": "invalid key", "type": "forbidden"}
            assert_not_echoed(answer, key, MASTER, INGEST)


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=route_id)
def test_an_admin_route_answers_403_to_the_ingest_key_and_passes_the_master_key(api_url, route):
    method, path = route
    with httpx.Client(base_url=api_url, timeout=TIMEOUT_S) as client:
        refused = client.request(method, url_path(path), headers=bearer(INGEST))
        # No body: with the master key each route gets past the key and answers about the
        # request itself (200, or 404/422), changing nothing.
        passed = client.request(method, url_path(path), headers=bearer(MASTER))
    assert refused.status_code == 403, refused.text
    assert "needs the master key" in refused.json()["error"]["message"]
    assert_not_echoed(refused, INGEST, MASTER)
    assert passed.status_code in (200, 404, 422), passed.text
    assert_not_echoed(passed, MASTER)


def test_the_client_routes_take_the_ingest_key_and_the_master_key(api_url):
    with httpx.Client(base_url=api_url, timeout=TIMEOUT_S) as client:
        for key in (INGEST, MASTER):
            checked = client.get("/v1/check", params={"team": "guarded", "user": "u1"}, headers=bearer(key))
            assert checked.status_code == 200, checked.text
            assert checked.json()["allowed"] is True
            event = usage(f"security-{secrets.token_hex(6)}", user="u1", team="guarded")
            published = client.post("/v1/usage", json=event, headers=bearer(key))
            assert published.status_code == 202, published.text
            assert published.json()["event_ids"] == [event["event_id"]]
            assert_not_echoed(checked, key)
            assert_not_echoed(published, key)


@pytest.mark.parametrize("route", sorted(OPEN_ROUTES), ids=route_id)
def test_the_open_routes_answer_without_a_key_and_show_none(api_url, route):
    method, path = route
    with httpx.Client(base_url=api_url, timeout=TIMEOUT_S) as client:
        answers = [client.request(method, path), client.request(method, path, headers=bearer(WRONG_KEYS[0]))]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert_not_echoed(answer, MASTER, INGEST, WRONG_KEYS[0])


def test_metrics_show_scopes_and_spend_but_no_key(api_url):
    text = httpx.get(f"{api_url}/metrics", timeout=TIMEOUT_S).text
    assert 'spend_ledger_max_budget_usd{scope_kind="team",scope_id="guarded",alias="security"} 2.5' in text
    for secret in (MASTER, INGEST):
        assert secret not in text


def test_the_ingest_key_cannot_change_a_budget(secured):
    ledger, api = secured
    with (
        httpx.Client(base_url=api.url, headers=bearer(MASTER), timeout=TIMEOUT_S) as admin,
        httpx.Client(base_url=api.url, headers=bearer(INGEST), timeout=TIMEOUT_S) as ingest,
    ):
        before = admin.get("/v1/budgets/team/guarded").json()
        commands_before = len(ledger.read(ledger.topics.budget_commands))
        attempts = [
            ingest.put("/v1/budgets/team/guarded", json={"max_budget": "1000", "budget_duration": "30d"}),
            ingest.put("/v1/budgets/team/taken", json={"max_budget": "1000"}),
            ingest.delete("/v1/budgets/team/guarded"),
            ingest.post("/v1/budgets/team/guarded/reset", json={}),
            ingest.post("/v1/budgets/team/guarded/reset", json={"limit_name": "30d"}),
            ingest.post(
                "/set_budget",
                json={"project_name": "p", "user_dict": {"security-user": {"total_budget": 1000, "duration": "daily"}}},
            ),
            ingest.post("/get_budget", json={"project_name": "p"}),
            ingest.post("/v1/replay", json={"apply": True}),
            ingest.get("/v1/budgets"),
            ingest.get("/v1/budgets/team/guarded"),
        ]
        for attempt in attempts:
            assert attempt.status_code == 403, (attempt.request.method, attempt.request.url.path, attempt.text)
            assert_not_echoed(attempt, INGEST, MASTER)
        # Nothing was published, and the budget reads back as it was (spend may have grown:
        # the client routes' test charged this team).
        assert len(ledger.read(ledger.topics.budget_commands)) == commands_before
        after = admin.get("/v1/budgets/team/guarded").json()
        assert budget_terms(after) == budget_terms(before)
        assert (after["max_budget_nanos"], after["soft_budget_nanos"]) == (2_500_000_000, 1_000_000_000)
        assert admin.get("/v1/budgets/team/taken").status_code == 404
        assert admin.get("/v1/budgets/user/security-user").status_code == 404
        # The same write with the master key goes through: the refusals were the key's.
        changed = admin.put("/v1/budgets/team/taken", json={"max_budget": "1000"})
        assert changed.status_code in (200, 202), changed.text
        assert changed.json()["max_budget_nanos"] == 1_000_000_000_000
        assert len(ledger.read(ledger.topics.budget_commands)) == commands_before + 1


def budget_terms(view: dict[str, Any]) -> dict[str, Any]:
    """What a budget write, delete or reset would change in a scope's view."""
    limit_terms = ("name", "model", "budget_duration", "max_budget_nanos", "soft_budget_nanos", "window_start")
    return {
        "scope_key": view["scope_key"],
        "alias": view["alias"],
        "budget_reset_at": view["budget_reset_at"],
        "limits": [{term: limit[term] for term in limit_terms} for limit in view["limits"]],
    }


# -- no secret in a log ----------------------------------------------------------------


def read_logs(folder: Path) -> dict[str, str]:
    """Every log file under ``folder``, by name."""
    return {path.name: path.read_text(errors="replace") for path in sorted(folder.rglob("*.log"))}


def test_no_key_reaches_the_logs_of_the_api_or_the_worker(broker, tmp_path):
    """The api at debug level (its access log on), the worker at info, both with the keys
    and a SASL password in their environment; requests with right, wrong and malformed
    keys; then every log they wrote is read once they have stopped."""
    ledger = Ledger(broker, tmp_path, kafka_sasl_username="ledger", kafka_sasl_password=SASL_PASSWORD)
    try:
        ledger.env = {**ledger.env, "SPEND_LEDGER_MASTER_KEY": MASTER, "SPEND_LEDGER_INGEST_KEY": INGEST}
        ledger.start_worker()
        ledger.env = {**ledger.env, "SPEND_LEDGER_LOG_LEVEL": "debug"}
        api = ledger.start_api(lake_at(tmp_path), master_key=MASTER, ingest_key=INGEST)
        with httpx.Client(base_url=api.url, timeout=TIMEOUT_S) as client:
            written = client.put("/v1/budgets/team/logged", json={"max_budget": "0.000001"}, headers=bearer(MASTER))
            assert written.status_code in (200, 202)
            event = usage(f"logged-{secrets.token_hex(6)}", user="u1", team="logged")
            assert client.post("/v1/usage", json=event, headers=bearer(INGEST)).status_code == 202
            assert client.get("/v1/check", params={"team": "logged"}, headers=bearer(INGEST)).status_code in (200, 402)
            for key in (*WRONG_KEYS, INGEST):
                assert client.get("/v1/spend", headers=bearer(key)).status_code == 403
                assert (
                    client.put("/v1/budgets/team/logged", json={"max_budget": 1}, headers=bearer(key)).status_code
                    == 403
                )
            for header in MALFORMED:
                assert client.get("/v1/alerts", headers={"Authorization": header}).status_code == 401
            # An error answer of the api with a key in hand: a 422 and a 404.
            assert (
                client.put("/v1/budgets/team/logged", json={"max_budget": -1}, headers=bearer(MASTER)).status_code
                == 422
            )
            assert client.get("/nowhere", headers=bearer(MASTER)).status_code == 404
            until(
                lambda: client.get("/v1/check", params={"team": "logged"}, headers=bearer(MASTER)).status_code,
                lambda status: status == 402,
                "the worker to charge the event over the tiny budget",
            )
    finally:
        ledger.stop_all()  # SIGTERM: each process flushes its log before it exits
    logs = read_logs(tmp_path)
    if broker.log_path is not None:
        logs["broker"] = broker.log_path.read_text(errors="replace")
    api_log = next(text for name, text in logs.items() if name.startswith("api-"))
    worker_log = next(text for name, text in logs.items() if name.startswith("worker-"))
    # The logs saw the requests (the access log names them), so their silence means something.
    assert '"GET /v1/spend HTTP/1.1" 403' in api_log
    assert '"GET /v1/alerts HTTP/1.1" 401' in api_log
    assert worker_log.strip()
    for name, text in logs.items():
        for secret in (MASTER, INGEST, SASL_PASSWORD, *WRONG_KEYS):
            assert secret not in text, f"{name} holds a key"


def test_a_failed_sasl_start_does_not_log_the_password(broker, tmp_path):
    """SASL cannot get past the embedded broker's handshake: the api and the worker stop at
    start-up, at debug level, and their logs (traceback included) hold no password."""
    env = {
        "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "SPEND_LEDGER_TOPIC_PREFIX": f"sasl{secrets.token_hex(4)}.",
        "SPEND_LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SPEND_LEDGER_KAFKA_SASL_MECHANISM": "PLAIN",
        "SPEND_LEDGER_KAFKA_SASL_USERNAME": "ledger",
        "SPEND_LEDGER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "SPEND_LEDGER_MASTER_KEY": MASTER,
        "SPEND_LEDGER_LOG_LEVEL": "debug",
        "SPEND_LEDGER_API_HOST": "127.0.0.1",
        "SPEND_LEDGER_API_PORT": str(free_port()),
        **store_env(lake_at(tmp_path)),
    }
    for command in ("api", "worker"):
        process = ChildProcess.command([command], env, tmp_path / f"{command}.log").start()
        try:
            code = process.wait(60.0)
        finally:
            process.stop()
        text = (tmp_path / f"{command}.log").read_text(errors="replace")
        assert code != 0, text[-2000:]
        assert "SaslHandShakeRequest" in text  # it did try SASL with these settings
        assert "Traceback" in text
        assert SASL_PASSWORD not in text
        assert MASTER not in text


def test_the_dev_stack_prints_its_master_key_in_the_summary_only(tmp_path):
    """``spend-ledger dev --demo`` with every process at debug level: the key is in the
    summary (on purpose: the user needs it) and in none of the process log lines."""
    from tests.e2e.conftest import DevRun

    run = DevRun(tmp_path, "--demo", env={"SPEND_LEDGER_LOG_LEVEL": "debug"})
    try:
        run.wait_ready()
        key = run.master_key
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        with httpx.Client(base_url=run.api_url, timeout=TIMEOUT_S) as client:
            assert client.get("/v1/budgets", headers=bearer(key)).status_code == 200
            assert client.get("/v1/budgets", headers=bearer(wrong)).status_code == 403
            assert client.get("/v1/check", params={"team": "research"}, headers=bearer(key)).status_code == 402
        assert run.stop() == 0
    finally:
        if run.process.poll() is None:
            run.kill()
    out = run.stdout()
    summary_start = out.index("\nspend-ledger dev is running on")
    summary = out[summary_start : out.index("\nTry:\n", summary_start)]
    assert f"  master key  {key}\n" in summary + "\n"
    process_lines = [line for line in out.splitlines() if re.match(r"^(broker|worker|api|dev) +\| ", line)]
    assert any(line.startswith("api    | ") for line in process_lines)
    assert any('"GET /v1/budgets HTTP/1.1" 403' in line for line in process_lines)  # the access log ran
    leaking = [line for line in process_lines if key in line or wrong in line]
    assert leaking == []
    assert key not in run.stderr()
    assert wrong not in out + run.stderr()
