"""The client side imports nothing of the server: checked in a process of its own in which
every server-only package is refused (tests/client_imports.py), as on an install of
``spend-ledger`` without the ``server`` extra. tests/e2e/test_litellm_proxy_install.py
checks the same on a real client-only install beside LiteLLM's proxy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.cli.server_only import SERVER_INSTALL, SERVER_MODULES

CLIENT_IMPORTS = Path(__file__).resolve().parents[1] / "client_imports.py"
SERVER_COMMANDS = [
    ["dev"],
    ["worker"],
    ["api"],
    ["broker"],
    ["project"],
    ["replay"],
    ["restore"],
    ["sql", "SELECT 1"],
    ["spend", "by"],
    ["spend", "top", "--kind", "team"],
    ["spend", "budgets"],
    ["spend", "dead-letters"],
]


def run_blocked(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLIENT_IMPORTS), *arguments[:1], "--block", *arguments[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_every_client_module_imports_with_the_server_packages_refused():
    answer = run_blocked("imports")
    assert answer.returncode == 0, answer.stderr
    report = json.loads(answer.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["server_only_loaded"] == []
    for module in (
        "ledger.sdk.budget_manager.local",
        "ledger.integrations.litellm_callback",
        "ledger.client.clients",
        "ledger.cli.main",
    ):
        assert module in report["imported"]


def test_the_blocker_refuses_every_server_package_the_cli_checks_for():
    # the server commands' check and the import check name the same packages
    from tests.client_imports import SERVER_ONLY

    assert set(SERVER_MODULES) <= set(SERVER_ONLY)


@pytest.mark.parametrize("command", SERVER_COMMANDS, ids=" ".join)
def test_a_server_command_on_a_client_install_names_the_install_line(command: list[str]):
    answer = run_blocked("cli", *command)
    assert answer.returncode == 2, answer.stdout + answer.stderr
    message = " ".join(answer.stderr.split())
    named = " ".join(command[:2] if command[0] == "spend" else command[:1])
    assert f"`spend-ledger {named}` runs the service" in message
    assert SERVER_INSTALL in message
    assert "Traceback" not in answer.stderr


def test_help_and_client_commands_work_on_a_client_install():
    help_answer = run_blocked("cli", "dev", "--help")
    assert help_answer.returncode == 0, help_answer.stderr
    assert "Usage: spend-ledger dev" in help_answer.stdout
    prices = run_blocked("cli", "prices", "show", "gpt-4o")
    assert prices.returncode == 0, prices.stderr
    assert "input_mtok" in prices.stdout
