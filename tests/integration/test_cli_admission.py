"""The admission commands as a user runs them, against a real broker, worker and api:
``limits import`` of a LiteLLM proxy config, ``limits set`` and LiteLLM's 60 TPM
walkthrough through ``admit``, a budget refusal, ``admissions`` and ``release``, the
priority reservation and a key's priority. One worker and one api for the whole module."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ledger.broker import EmbeddedBroker, free_port
from ledger.cli.admission import EXIT_RATE_LIMITED
from ledger.cli.main import app
from ledger.cli.usage import EXIT_OVER_BUDGET
from tests.integration.builders import in_one_minute, unique
from tests.integration.conftest import ApiProcess, Ledger, running_ledger

MASTER_KEY = "sk-test-cli-admission-0123456789"
EXIT_ERROR = 2

runner = CliRunner()


@dataclass
class Stack:
    ledger: Ledger
    api: ApiProcess
    env: dict[str, str]

    def run(self, *args: str) -> Result:
        return runner.invoke(app, list(args), env=self.env)


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_ledger(broker, tmp_path_factory.mktemp("cli-admission"), MASTER_KEY) as (ledger, api):
        env = {**ledger.env, "SPEND_LEDGER_API_URL": api.url, "SPEND_LEDGER_MASTER_KEY": MASTER_KEY}
        yield Stack(ledger, api, env)


def said(result: Result) -> str:
    """Everything the command printed, wrapped lines joined."""
    return " ".join(result.output.split())


def shown_models(stack: Stack) -> dict[str, dict[str, int | None]]:
    shown = stack.run("limits", "show", "--json")
    assert shown.exit_code == 0, shown.output
    return {model["model"]: {"tpm": model["tpm"], "rpm": model["rpm"]} for model in json.loads(shown.stdout)["models"]}


def test_limits_import_adds_up_a_models_deployments_and_show_lists_it(stack: Stack, tmp_path: Path):
    model, plain = unique("eu/gpt-4o"), unique("gpt-3.5-turbo")  # model names may hold a slash
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: {model}
                litellm_params:
                  model: azure/gpt-4o-eu
                  api_key: os.environ/AZURE_API_KEY_EU
                  tpm: 100000
                  rpm: 6
              - model_name: {model}
                litellm_params:
                  model: azure/gpt-4o-ca
                  api_key: os.environ/AZURE_API_KEY_CA
                  tpm: 200000
                  rpm: 6
              - model_name: {plain}
                litellm_params: {{model: {plain}}}
            general_settings:
              master_key: sk-1234
            """
        )
    )
    dry = stack.run("limits", "import", str(config), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would set" in said(dry)
    assert "no limits (not imported)" in said(dry)
    assert model not in shown_models(stack)  # a dry run sends nothing

    imported = stack.run("limits", "import", str(config))
    assert imported.exit_code == 0, imported.output
    assert "set the limits of 1 model" in said(imported)
    models = shown_models(stack)
    assert models[model] == {"tpm": 300_000, "rpm": 12}
    assert plain not in models
    table = stack.run("limits", "show")
    assert table.exit_code == 0, table.output
    assert model in table.output
    assert "300000" in table.output


def test_limits_import_refuses_an_environment_reference_naming_the_entry(stack: Stack, tmp_path: Path):
    model = unique("gpt-4o")
    config = tmp_path / "config.yaml"
    config.write_text(f"model_list:\n  - model_name: {model}\n    litellm_params: {{tpm: os.environ/TPM}}\n")
    refused = stack.run("limits", "import", str(config))
    assert refused.exit_code == EXIT_ERROR
    assert "model_list[0].litellm_params.tpm" in said(refused)
    assert "environment variable" in said(refused)
    assert model not in shown_models(stack)


def test_limits_set_then_litellms_sixty_tpm_walkthrough_refuses_key_2(stack: Stack):
    model = unique("walkthrough-model")
    written = stack.run("limits", "set", model, "--tpm", "60")
    assert written.exit_code == 0, written.output
    assert f"set {model}: 60 TPM, no RPM limit" in said(written)
    in_one_minute()
    call = ("--model", model, "--prompt-tokens", "10", "--max-tokens", "20", "--cost", "0.001")

    first = stack.run("admit", "--key", "key-1", *call)
    assert first.exit_code == 0, first.output
    assert "admitted" in said(first)
    second = stack.run("admit", "--key", "key-2", *call, "--json")
    assert second.exit_code == 0, second.output
    hold = json.loads(second.stdout)
    assert hold["tpm"] == {"limit": 30, "remaining": 0, "model_remaining": 0, "active_keys": 2}
    assert hold["estimated_tokens"] == 30

    refused = stack.run("admit", "--key", "key-2", *call)
    assert refused.exit_code == EXIT_RATE_LIMITED, refused.output
    assert "Key=key-2 over available TPM=0. Model TPM=0, Active keys=2" in said(refused)
    as_json = stack.run("admit", "--key", "key-2", *call, "--json")
    assert as_json.exit_code == EXIT_RATE_LIMITED
    answer = json.loads(as_json.stdout)
    assert answer["status"] == 429
    assert answer["message"] == "Key=key-2 over available TPM=0. Model TPM=0, Active keys=2"
    assert 1 <= answer["retry_after_s"] <= 60


def test_over_budget_exits_1_and_release_frees_the_hold(stack: Stack):
    team = unique("research")
    budget = stack.run("budgets", "set", "team", team, "--max-budget", "1")
    assert budget.exit_code == 0, budget.output
    call = ("--team", team, "--model", "gpt-4o-mini", "--cost", "0.6")

    first_id = unique("call")
    first = stack.run("admit", *call, "--request-id", first_id)
    assert first.exit_code == 0, first.output
    assert first_id in said(first)
    listed = stack.run("admissions", "--scope", f"team:{team}", "--json")
    assert listed.exit_code == 0, listed.output
    assert [hold["request_id"] for hold in json.loads(listed.stdout)] == [first_id]
    table = stack.run("admissions", "--scope", f"team:{team}")
    assert "1 open holds" in said(table)
    assert first_id in table.output

    refused = stack.run("admit", *call)
    assert refused.exit_code == EXIT_OVER_BUDGET, refused.output
    assert f"by team:{team}" in said(refused)
    assert "Budget has been exceeded!" in said(refused)

    released = stack.run("release", first_id)
    assert released.exit_code == 0, released.output
    assert f"released {first_id}" in said(released)
    assert "no open holds" in said(stack.run("admissions", "--scope", f"team:{team}"))
    again = stack.run("admit", *call)
    assert again.exit_code == 0, again.output  # the released 0.6 is room again
    twice = stack.run("release", first_id)
    assert twice.exit_code == EXIT_ERROR
    assert "already ended" in said(twice)
    assert "HTTP 409" in said(twice)


def test_priority_reservation_key_priority_and_delete(stack: Stack):
    model, dev_key = unique("priority-model"), unique("dev-key")
    assert stack.run("limits", "set", model, "--rpm", "100").exit_code == 0
    reserved = stack.run("limits", "reservation", '{"dev": 0, "prod": 1}')
    assert reserved.exit_code == 0, reserved.output
    assert "dev 0, prod 1" in said(reserved)
    keyed = stack.run("limits", "key-priority", dev_key, "dev")
    assert keyed.exit_code == 0, keyed.output
    shown = json.loads(stack.run("limits", "show", "--json").stdout)
    assert shown["priority_reservation"] == {"dev": 0.0, "prod": 1.0}
    assert shown["key_priorities"][dev_key] == "dev"

    in_one_minute()
    refused = stack.run("admit", "--key", dev_key, "--model", model, "--cost", "0.001")
    assert refused.exit_code == EXIT_RATE_LIMITED, refused.output
    assert "over available RPM=0. Model RPM=100" in said(refused)
    prod = stack.run("admit", "--key", unique("prod-key"), "--priority", "prod", "--model", model, "--cost", "0.001")
    assert prod.exit_code == 0, prod.output
    unknown = stack.run("admit", "--key", unique("k"), "--priority", "staging", "--model", model, "--cost", "0.001")
    assert unknown.exit_code == EXIT_ERROR
    assert "priority_reservation" in said(unknown)

    pairs = stack.run("limits", "reservation", "dev=0.25", "prod=0.75")
    assert pairs.exit_code == 0, pairs.output
    assert "priority reservation: dev 0.25, prod 0.75" in said(stack.run("limits", "reservation"))
    cleared = stack.run("limits", "reservation", "--clear")
    assert cleared.exit_code == 0, cleared.output

    deleted = stack.run("limits", "delete", model)
    assert deleted.exit_code == 0, deleted.output
    assert model not in shown_models(stack)
    missing = stack.run("limits", "delete", model)
    assert missing.exit_code == EXIT_ERROR
    assert "has no TPM/RPM limits" in said(missing)


def test_without_a_running_api_the_commands_exit_2_and_a_dry_run_still_reads_the_config(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    for command in (
        ["admit", "--model", "gpt-4o", "--cost", "0.01"],
        ["release", "cli-1"],
        ["admissions"],
        ["limits", "show"],
        ["limits", "set", "gpt-4o", "--tpm", "60"],
    ):
        result = runner.invoke(app, [*command, "--url", url])
        assert result.exit_code == EXIT_ERROR, result.output
        assert f"cannot reach the spend-ledger api at {url}" in said(result)
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: gpt-4o, tpm: 60}\n")
    dry = runner.invoke(app, ["limits", "import", str(config), "--dry-run", "--json", "--url", url])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["models"][0] == {
        "model": "gpt-4o", "tpm": 60, "rpm": None, "models": None, "deployments": 1, "set": False,
        "applied": False,
    }  # fmt: skip
    bad_cost = runner.invoke(app, ["admit", "--model", "gpt-4o", "--cost", "abc", "--url", url])
    assert bad_cost.exit_code == EXIT_ERROR
    assert "not a decimal amount" in said(bad_cost)


def test_limits_import_records_an_alias_groups_models_and_an_admit_naming_the_group_is_priced_as_them(
    stack: Stack, tmp_path: Path
):
    group = unique("team-gpt")
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: {group}
                litellm_params: {{model: gpt-4o-mini, rpm: 2}}
              - model_name: {group}
                litellm_params: {{model: azure/my-deployment, api_key: os.environ/AZURE_API_KEY}}
                model_info: {{base_model: gpt-4o}}
            """
        )
    )
    imported = stack.run("limits", "import", str(config), "--json")
    assert imported.exit_code == 0, imported.output
    [row] = json.loads(imported.stdout)["models"]
    assert (row["model"], row["rpm"], row["models"], row["applied"]) == (group, 2, ["gpt-4o-mini", "gpt-4o"], True)
    shown = json.loads(stack.run("limits", "show", "--json").stdout)["models"]
    assert [model["models"] for model in shown if model["model"] == group] == [["gpt-4o-mini", "gpt-4o"]]
    admitted = stack.run("admit", "--model", group, "--key", unique("k"), "--prompt-tokens", "10", "--json")
    assert admitted.exit_code == 0, admitted.output
    hold = json.loads(admitted.stdout)
    assert (hold["model"], hold["model_group"]) == ("gpt-4o", group)  # the dearest of the two
