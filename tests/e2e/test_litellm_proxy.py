"""The real LiteLLM proxy with our callback, as README "The LiteLLM callback" sets it up:
``litellm[proxy]==1.97.0`` in the cached venv, ``litellm --config`` with the README's
``config.yaml`` and ``custom_auth.py`` (read from its fenced blocks, so the README shows
what runs), a master key and no database, against the session ``spend-ledger dev`` stack.
Clients call it over HTTP with the openai client, with the README's keys; LiteLLM's
``mock_response`` stands in for the provider. Two deployments are added for the tests: an
alias with no rate limits (concurrent calls) and one whose mock raises (a failed call).
One proxy serves the module; a second, briefly, runs with the User-Agent tag setting on."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from ledger.domain.money import usd_to_nanos
from tests.e2e.waiting import until
from tests.litellm_proxy_venv import ProxyVenv, RunningProxy, running_proxy

# The first run of the session may build the proxy's venv (about a minute with a warm pip cache).
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "sk-proxy-e2e-master-key"
DANA, ELI, FAY = "sk-search-dana", "sk-search-eli", "sk-billing-fay"  # the README's custom_auth keys
CALL_TIMEOUT_S = 60.0
CONCURRENT_CALLS = 10
# LiteLLM's mock usage is 10 prompt and 20 completion tokens whatever the text; gpt-4o-mini
# is $0.15 / $0.60 per Mtok.
MOCK_CALL_NANOS = 10 * 150 + 20 * 600
# Deployments the tests add to the README's config.
TEST_DEPLOYMENTS: list[dict[str, Any]] = [
    {"model_name": "team-gpt-burst", "litellm_params": {"model": "openai/gpt-4o-mini", "mock_response": "Hi!"}},
    {
        "model_name": "broken-gpt",
        "litellm_params": {"model": "openai/gpt-4o-mini", "mock_response": "litellm.InternalServerError"},
    },
]
# A prompt the admission counts as more than LiteLLM's 10 mock prompt tokens, so that with
# max_tokens=20 the estimate is an upper bound of the mock's cost, as it is of a real call's.
PROMPT = [{"role": "user", "content": "Summarise the quarterly numbers for the board in three short bullet points."}]
MAX_TOKENS = 20


def readme_block(info: str) -> str:
    """The README's one fenced block with this info string (```yaml litellm-proxy)."""
    [block] = re.findall(rf"```{re.escape(info)}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return str(block)


def key_scope(api_key: str) -> str:
    """The ledger's key scope of a proxy key: LiteLLM's hash of it."""
    return f"key:{hashlib.sha256(api_key.encode()).hexdigest()}"


def cost_nanos(headers: httpx.Headers) -> int:
    """The proxy's ``x-litellm-response-cost`` header (USD, a float's text) in nanos."""
    return usd_to_nanos(Decimal(headers["x-litellm-response-cost"]))


def litellm_cost_nanos(venv: ProxyVenv, prompt_tokens: int, completion_tokens: int) -> int:
    """LiteLLM's own cost of gpt-4o-mini usage (``litellm.cost_per_token`` in the proxy's venv)."""
    script = (
        "import litellm; print(repr(sum(litellm.cost_per_token(model='gpt-4o-mini',"
        f" prompt_tokens={prompt_tokens}, completion_tokens={completion_tokens}))))"
    )
    answer = venv.run(["python", "-c", script], cwd=ROOT)
    assert answer.returncode == 0, answer.stderr
    return usd_to_nanos(Decimal(answer.stdout.strip()))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def proxy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``config.yaml`` (the README's, with TEST_DEPLOYMENTS) and ``custom_auth.py`` (the README's)."""
    folder = tmp_path_factory.mktemp("litellm-proxy")
    config = yaml.safe_load(readme_block("yaml litellm-proxy"))
    config["model_list"] = [*config["model_list"], *TEST_DEPLOYMENTS]
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "custom_auth.py").write_text(readme_block("python litellm-custom-auth"))
    return folder


@pytest.fixture(scope="module")
def imported_limits(proxy_folder: Path, stack_url: str, stack_key: str) -> str:
    """``spend-ledger limits import config.yaml``, run from our .venv against the dev stack."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPEND_LEDGER_")},
        "SPEND_LEDGER_API_URL": stack_url,
        "SPEND_LEDGER_MASTER_KEY": stack_key,
    }
    spend_ledger = ROOT / ".venv" / "bin" / "spend-ledger"
    answer = subprocess.run(
        [str(spend_ledger), "limits", "import", "config.yaml"],
        cwd=proxy_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer.stdout


def proxy_env(stack_url: str, stack_key: str) -> dict[str, str]:
    return {"SPEND_LEDGER_API_URL": stack_url, "SPEND_LEDGER_MASTER_KEY": stack_key, "LITELLM_MASTER_KEY": MASTER_KEY}


@pytest.fixture(scope="module")
def proxy(
    litellm_proxy_venv: ProxyVenv, proxy_folder: Path, imported_limits: str, stack_url: str, stack_key: str
) -> Iterator[RunningProxy]:
    """One ``litellm --config config.yaml`` for the module, on a loopback port, stopped by pid."""
    env = proxy_env(stack_url, stack_key)
    with running_proxy(litellm_proxy_venv, proxy_folder / "config.yaml", proxy_folder / "proxy.log", env=env) as run:
        yield run
    assert run.process.exit_code is not None, f"litellm (pid {run.pid}) was stopped"


def client(proxy: RunningProxy, api_key: str) -> openai.OpenAI:
    """A client as a proxy user has one: the openai package, the proxy's URL, a key; no retries."""
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=api_key, max_retries=0, timeout=CALL_TIMEOUT_S)


def chat(proxy: RunningProxy, api_key: str, model: str = "gpt-4o-mini", **options: Any) -> Any:
    """One chat completion through the proxy; the raw response (headers and parsed body)."""
    with client(proxy, api_key) as openai_client:
        raw = openai_client.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, max_tokens=MAX_TOKENS, **options
        )
        raw.parse()
        return raw


def spend(admin: httpx.Client, scope: str, group_by: str = "scope") -> dict[str, Any]:
    """The store's spend of the entries charged to ``scope``."""
    answer = admin.get("/v1/spend", params={"scope": scope, "group_by": group_by})
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def spend_once_stored(admin: httpx.Client, scope: str, entries: int) -> dict[str, Any]:
    """The spend of ``scope`` once the store holds ``entries`` usage entries charged to it."""
    views: list[dict[str, Any]] = []

    def stored() -> bool:
        views.append(spend(admin, scope))
        counts = {row["entry_count"] for row in views[-1]["rows"] if row["groups"]["scope"] == scope}
        return counts == {entries}

    try:
        until(stored, f"{entries} entries charged to {scope}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the store has {views[-1]}") from None
    return views[-1]


def spent_by_scope(view: dict[str, Any]) -> dict[str, int]:
    return {row["groups"]["scope"]: row["spend_nanos"] for row in view["rows"]}


def open_holds(admin: httpx.Client, scope: str) -> list[dict[str, Any]]:
    answer = admin.get("/v1/admissions", params={"state": "open", "scope": scope})
    assert answer.status_code == 200, answer.text
    holds: list[dict[str, Any]] = answer.json()["holds"]
    return holds


def set_budget(admin: httpx.Client, kind: str, scope_id: str, max_budget: str) -> None:
    answer = admin.put(f"/v1/budgets/{kind}/{scope_id}", json={"max_budget": max_budget})
    assert answer.status_code == 200, answer.text


def test_the_readme_config_and_custom_auth_are_what_the_proxy_runs(proxy_folder: Path) -> None:
    config = yaml.safe_load((proxy_folder / "config.yaml").read_text())
    assert config["litellm_settings"]["callbacks"] == "ledger.integrations.litellm_callback.proxy_handler_instance"
    assert config["general_settings"]["custom_auth"] == "custom_auth.user_api_key_auth"
    groups = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    assert groups["team-gpt"]["model"] == "openai/gpt-4o-mini"  # the alias
    auth = (proxy_folder / "custom_auth.py").read_text()
    for key in (DANA, ELI, FAY):
        assert f'"{key}"' in auth
    install = "pip install 'spend-ledger[litellm]' 'litellm[proxy]==1.97.0' 'fastapi<0.140.7'"
    assert install in (ROOT / "README.md").read_text()
    assert "litellm[proxy]==1.97.0" in (ROOT / "tests" / "litellm_proxy_requirements.txt").read_text()


def test_each_call_is_charged_once_at_the_proxys_response_cost(
    proxy: RunningProxy, admin: httpx.Client, litellm_proxy_venv: ProxyVenv
) -> None:
    tag, end_user = unique("proxy-charge"), unique("customer")
    scoped = {"user": end_user, "extra_body": {"metadata": {"tags": [tag]}}}
    plain = chat(proxy, DANA, **scoped)
    assert plain.parse().choices[0].message.content == "Hi!"
    with client(proxy, DANA) as openai_client:
        streamed = openai_client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            **scoped,
        )
        chunks = list(streamed.parse())
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "Hi!"
    # A stream's headers leave before its cost is known: the proxy sends no x-litellm-response-cost.
    # LiteLLM's mock stream counts the tokens it streams; LiteLLM's own price of that usage it is.
    assert "x-litellm-response-cost" not in streamed.headers
    usage = chunks[-1].usage
    assert usage is not None
    charged = [
        cost_nanos(plain.headers),
        litellm_cost_nanos(litellm_proxy_venv, usage.prompt_tokens, usage.completion_tokens),
    ]
    stream_tokens = f"{usage.prompt_tokens}+{usage.completion_tokens} tokens"
    header = plain.headers["x-litellm-response-cost"]
    print(f"charged: {charged} nanos (x-litellm-response-cost {header}; the stream {stream_tokens})")

    view = spend_once_stored(admin, f"tag:{tag}", entries=2)
    by_scope = spent_by_scope(view)
    expected = sum(charged)
    assert by_scope == {
        "global:*": expected,
        "team:search": expected,
        "user:dana": expected,
        key_scope(DANA): expected,
        f"end_user:{end_user}": expected,
        f"tag:{tag}": expected,
    }
    assert not [scope for scope in by_scope if scope.lower().startswith("tag:user-agent")]
    assert open_holds(admin, f"tag:{tag}") == []  # each call's usage event settled its hold
    models = {row["groups"]["model_group"] for row in spend(admin, f"tag:{tag}", "model_group")["rows"]}
    assert models == {"gpt-4o-mini"}


def test_the_master_key_passes_and_a_key_custom_auth_does_not_know_is_refused(
    proxy: RunningProxy, admin: httpx.Client
) -> None:
    tag = unique("proxy-auth")
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(proxy, "sk-nobody-knows", extra_body={"metadata": {"tags": [tag]}})
    assert refused.value.status_code == 401
    admitted = chat(proxy, MASTER_KEY, extra_body={"metadata": {"tags": [tag]}})
    view = spend_once_stored(admin, f"tag:{tag}", entries=1)
    assert spent_by_scope(view) == {
        "global:*": cost_nanos(admitted.headers),
        key_scope(MASTER_KEY): cost_nanos(admitted.headers),
        f"tag:{tag}": cost_nanos(admitted.headers),
    }


def test_an_end_user_over_budget_is_refused_with_litellms_message_and_nothing_charged(
    proxy: RunningProxy, admin: httpx.Client
) -> None:
    tag, end_user = unique("proxy-end-user"), unique("customer")
    set_budget(admin, "end_user", end_user, "0.000001")  # less than one call's estimate
    with pytest.raises(openai.BadRequestError) as refused:
        chat(proxy, DANA, user=end_user, extra_body={"metadata": {"tags": [tag]}})
    assert refused.value.status_code == 400
    print(f"refused: {refused.value.message}")
    assert "Budget has been exceeded! Current cost: " in refused.value.message
    assert "Max budget: 0.000001" in refused.value.message
    assert chat(proxy, DANA, user=unique("customer"), extra_body={"metadata": {"tags": [tag]}}).http_response
    view = spend_once_stored(admin, f"tag:{tag}", entries=1)  # the other end user's call only
    assert f"end_user:{end_user}" not in spent_by_scope(view)
    assert spend(admin, f"end_user:{end_user}")["total_spend_nanos"] == 0
    assert open_holds(admin, f"end_user:{end_user}") == []


def test_a_key_or_team_over_budget_refuses_that_key_only(proxy: RunningProxy, admin: httpx.Client) -> None:
    fay = key_scope(FAY).removeprefix("key:")
    tag = unique("proxy-key")
    scoped = {"extra_body": {"metadata": {"tags": [tag]}}}
    set_budget(admin, "key", fay, "0.000001")
    try:
        with pytest.raises(openai.BadRequestError) as by_key:
            chat(proxy, FAY, **scoped)
        assert admin.delete(f"/v1/budgets/key/{fay}").status_code == 200
        set_budget(admin, "team", "billing", "0.000001")
        with pytest.raises(openai.BadRequestError) as by_team:
            chat(proxy, FAY, **scoped)
        admitted = chat(proxy, ELI, **scoped)  # team search: not refused
    finally:
        admin.delete(f"/v1/budgets/key/{fay}")
        admin.delete("/v1/budgets/team/billing")
    for refused, scope in ((by_key.value, key_scope(FAY)), (by_team.value, "team:billing")):
        assert refused.status_code == 400
        assert "Budget has been exceeded!" in refused.message
        assert f"({scope}," in refused.message
    view = spend_once_stored(admin, f"tag:{tag}", entries=1)
    assert spent_by_scope(view)[f"tag:{tag}"] == cost_nanos(admitted.headers)
    assert key_scope(FAY) not in spent_by_scope(view)
    assert "team:billing" not in spent_by_scope(view)


def test_an_alias_groups_rpm_from_the_config_admits_two_calls_a_minute(
    proxy: RunningProxy, admin: httpx.Client, imported_limits: str
) -> None:
    limits = admin.get("/v1/models/team-gpt/limits")
    assert limits.status_code == 200, limits.text
    assert limits.json()["rpm"] == 2
    # recorded as the config names the deployment's model; priced as gpt-4o-mini
    assert [model.removeprefix("openai/") for model in limits.json()["models"]] == ["gpt-4o-mini"]
    # Shares count per UTC minute: four calls must fall in one.
    if datetime.now(UTC).second > 45:
        time.sleep(61 - datetime.now(UTC).second)
    statuses, refusals = [], []
    for _ in range(4):
        try:
            statuses.append(chat(proxy, ELI, model="team-gpt").status_code)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
            refusals.append(exc)
    assert statuses == [200, 200, 429, 429]
    for refused in refusals:
        assert "over available RPM" in refused.message
        assert refused.response.headers.get("retry-after")


def test_concurrent_calls_on_an_alias_never_spend_past_the_budget(proxy: RunningProxy, admin: httpx.Client) -> None:
    tag = unique("proxy-burst")
    budget_nanos = MOCK_CALL_NANOS * 7 // 2  # room for three calls and a half, at their real cost
    set_budget(admin, "tag", tag, str(Decimal(budget_nanos) / 10**9))
    results: list[Any] = [None] * CONCURRENT_CALLS

    def call(index: int) -> None:
        try:
            results[index] = chat(proxy, DANA, model="team-gpt-burst", extra_body={"metadata": {"tags": [tag]}})
        except openai.APIStatusError as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(CONCURRENT_CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S * 2)
    admitted = [result for result in results if not isinstance(result, openai.APIStatusError)]
    refused = [result for result in results if isinstance(result, openai.APIStatusError)]
    assert len(admitted) + len(refused) == CONCURRENT_CALLS
    assert {exc.status_code for exc in refused} <= {400}
    assert all("Budget has been exceeded!" in exc.message for exc in refused)
    assert 1 <= len(admitted) < CONCURRENT_CALLS
    charged = sum(cost_nanos(result.headers) for result in admitted)
    view = spend_once_stored(admin, f"tag:{tag}", entries=len(admitted))
    spent = spent_by_scope(view)[f"tag:{tag}"]
    print(f"{len(admitted)} of {CONCURRENT_CALLS} admitted, {spent} nanos spent of a {budget_nanos} budget")
    assert spent == charged
    assert spent <= budget_nanos
    assert open_holds(admin, f"tag:{tag}") == []


def test_a_failed_call_releases_its_hold_and_charges_nothing(proxy: RunningProxy, admin: httpx.Client) -> None:
    tag = unique("proxy-failed")
    with pytest.raises(openai.InternalServerError) as failed:
        chat(proxy, DANA, model="broken-gpt", extra_body={"metadata": {"tags": [tag]}})
    assert failed.value.status_code == 500
    until(lambda: open_holds(admin, f"tag:{tag}") == [], f"no open hold on tag:{tag}")
    call_id = failed.value.response.headers.get("x-litellm-call-id")
    print(f"failed: {failed.value.message} (x-litellm-call-id {call_id})")
    assert call_id is not None
    ended = admin.delete(f"/v1/admit/{call_id}")  # the hold was taken under the call's id, and released
    assert ended.status_code == 409, ended.text
    assert "released" in ended.text
    assert spend(admin, f"tag:{tag}")["total_spend_nanos"] == 0
    assert chat(proxy, DANA, extra_body={"metadata": {"tags": [tag]}}).status_code == 200
    view = spend_once_stored(admin, f"tag:{tag}", entries=1)  # only the call that succeeded
    assert spent_by_scope(view)[f"tag:{tag}"] == MOCK_CALL_NANOS


def test_litellms_user_agent_tags_are_charged_only_when_the_setting_keeps_them(
    litellm_proxy_venv: ProxyVenv, proxy_folder: Path, stack_url: str, stack_key: str, admin: httpx.Client
) -> None:
    # A second proxy, started with the setting on: the openai client's User-Agent is
    # OpenAI/Python <version>, which LiteLLM turns into two tags of its own.
    env = {**proxy_env(stack_url, stack_key), "SPEND_LEDGER_LITELLM_KEEP_USER_AGENT_TAGS": "true"}
    tag = unique("proxy-user-agent")
    with running_proxy(litellm_proxy_venv, proxy_folder / "config.yaml", proxy_folder / "keep.log", env=env) as run:
        chat(run, DANA, extra_body={"metadata": {"tags": [tag]}})
        # the proxy publishes after it answers: stopped at once, it may not have
        view = spend_once_stored(admin, f"tag:{tag}", entries=1)
    user_agent_tags = {scope for scope in spent_by_scope(view) if scope.startswith("tag:User-Agent: ")}
    assert user_agent_tags == {"tag:User-Agent: OpenAI", f"tag:User-Agent: OpenAI/Python {openai.__version__}"}
