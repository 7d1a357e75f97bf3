"""A LiteLLM proxy config.yaml read as model capacities: where LiteLLM's router looks for a
deployment's tpm/rpm, the deployments of one model_name added up, and clear errors."""

from __future__ import annotations

import textwrap

import pytest

from ledger.domain.rate_shares import CAPACITY_MAX
from ledger.integrations.litellm_config import (
    CONFIG_CHARS_MAX,
    ConfigCapacities,
    LiteLLMConfigError,
    ModelCapacity,
    model_capacities,
)

# In the spirit of LiteLLM's proxy docs (load balancing, "Quick Start - Load Balancing"):
# one model_name served by two deployments, plus a model without limits.
DOCS_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://my-endpoint-europe-berri-992.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY_EU
      rpm: 6      # Rate limit for this deployment: in requests per minute (rpm)
      tpm: 100000
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-ca
      api_base: https://my-endpoint-canada-berri992.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY_CA
      rpm: 6
      tpm: 200000
  - model_name: gpt-3.5-turbo
    litellm_params:
      model: gpt-3.5-turbo
      api_key: os.environ/OPENAI_API_KEY

router_settings:
  routing_strategy: usage-based-routing-v2
  enable_pre_call_checks: true

litellm_settings:
  callbacks: ["dynamic_rate_limiter_v3"]
  priority_reservation: {"dev": 0, "prod": 1}

general_settings:
  master_key: sk-1234
"""


def config(text: str) -> ConfigCapacities:
    return model_capacities(textwrap.dedent(text))


def refused(text: str) -> LiteLLMConfigError:
    with pytest.raises(LiteLLMConfigError) as caught:
        config(text)
    return caught.value


def by_name(capacities: ConfigCapacities) -> dict[str, ModelCapacity]:
    return {model.model_name: model for model in capacities.models}


# -- sums and places --------------------------------------------------------------------


def test_docs_config_two_gpt_4o_deployments_add_up_to_300000_tpm():
    capacities = model_capacities(DOCS_CONFIG)
    assert capacities.models == (
        ModelCapacity("gpt-4o", 300_000, 12, 2, 2, 2, ("azure/gpt-4o-eu", "azure/gpt-4o-ca")),
        ModelCapacity("gpt-3.5-turbo", None, None, 1, 0, 0, ("gpt-3.5-turbo",)),
    )
    assert [model.model_name for model in capacities.with_limits] == ["gpt-4o"]
    assert capacities.without_limits == ("gpt-3.5-turbo",)


def test_capacity_may_sit_on_the_entry_in_litellm_params_or_in_model_info():
    capacities = config(
        """
        model_list:
          - model_name: entry-level        # LiteLLM's load_balancer.yaml writes them here
            litellm_params: {model: gpt-3.5-turbo}
            tpm: 20000
            rpm: 3
          - model_name: in-params
            litellm_params: {model: gpt-4o, tpm: 1000, rpm: 10}
          - model_name: in-model-info
            litellm_params: {model: gpt-4o}
            model_info: {id: abc, tpm: 500, rpm: 5}
        """
    )
    found = by_name(capacities)
    assert (found["entry-level"].tpm, found["entry-level"].rpm) == (20_000, 3)
    assert (found["in-params"].tpm, found["in-params"].rpm) == (1_000, 10)
    assert (found["in-model-info"].tpm, found["in-model-info"].rpm) == (500, 5)


def test_the_entry_wins_over_litellm_params_which_wins_over_model_info_as_in_litellms_router():
    capacities = config(
        """
        model_list:
          - model_name: m
            tpm: 1
            litellm_params: {model: x, tpm: 2, rpm: 20}
            model_info: {tpm: 3, rpm: 30}
        """
    )
    assert (capacities.models[0].tpm, capacities.models[0].rpm) == (1, 20)


def test_deployments_add_up_across_places_and_a_deployment_without_capacity_adds_nothing():
    capacities = config(
        """
        model_list:
          - model_name: gpt-4o
            litellm_params: {model: azure/a, tpm: 100000}
          - model_name: gpt-4o
            litellm_params: {model: azure/b}
            tpm: 50000
            rpm: 60
          - model_name: gpt-4o
            litellm_params: {model: openai/gpt-4o}
          - model_name: claude
            litellm_params: {model: anthropic/claude, rpm: 5}
          - model_name: gpt-4o
            litellm_params: {model: azure/c}
            model_info: {rpm: 40}
        """
    )
    assert capacities.models == (
        ModelCapacity("gpt-4o", 150_000, 100, 4, 2, 2, ("azure/a", "azure/b", "openai/gpt-4o", "azure/c")),
        ModelCapacity("claude", None, 5, 1, 0, 1, ("anthropic/claude",)),
    )


def test_yaml_number_forms_read_as_whole_numbers():
    capacities = config(
        """
        model_list:
          - model_name: m
            litellm_params: {model: x, tpm: 20_000, rpm: 0x10}
        """
    )
    assert (capacities.models[0].tpm, capacities.models[0].rpm) == (20_000, 16)


def test_null_capacities_and_null_model_info_count_as_not_given():
    capacities = config(
        """
        model_list:
          - model_name: m
            tpm: null
            litellm_params: {model: x, tpm: 7, rpm: null}
            model_info:
        """
    )
    assert capacities.models == (ModelCapacity("m", 7, None, 1, 1, 0, ("x",)),)


def test_an_empty_model_list_has_no_models():
    assert config("model_list: []").models == ()
    assert config("model_list:\ngeneral_settings: {}").models == ()


def test_sums_up_to_the_ledgers_maximum_capacity_and_no_further():
    half = CAPACITY_MAX // 2
    text = f"""
        model_list:
          - model_name: m
            litellm_params: {{model: a, tpm: {half}}}
          - model_name: m
            litellm_params: {{model: b, tpm: {CAPACITY_MAX - half}}}
        """
    assert config(text).models[0].tpm == CAPACITY_MAX
    error = refused(text.replace(f"tpm: {CAPACITY_MAX - half}", f"tpm: {CAPACITY_MAX - half + 1}"))
    assert error.path == "model_list"
    assert "'m' add up to" in str(error)


# -- included files -----------------------------------------------------------------------


def test_included_files_add_their_deployments_like_litellms_proxy():
    files = {
        "models.yaml": "model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: azure/b, tpm: 200000}\n",
        "more.yaml": "litellm_settings: {drop_params: true}\n",
    }
    text = """
        include: [models.yaml, more.yaml]
        model_list:
          - model_name: gpt-4o
            litellm_params: {model: azure/a, tpm: 100000}
        """
    capacities = model_capacities(textwrap.dedent(text), files.__getitem__)
    assert capacities.models == (ModelCapacity("gpt-4o", 300_000, None, 2, 2, 0, ("azure/a", "azure/b")),)
    only_includes = model_capacities("include: [models.yaml]\n", files.__getitem__)
    assert only_includes.models == (ModelCapacity("gpt-4o", 200_000, None, 1, 1, 0, ("azure/b",)),)


def test_a_config_with_includes_is_refused_without_a_way_to_read_them():
    error = refused("include: [models.yaml]\nmodel_list: []\n")
    assert error.path == "include"
    assert "models.yaml" in str(error)


def test_an_error_in_an_included_file_names_the_file_and_the_entry():
    files = {"models.yaml": "model_list:\n  - model_name: m\n    litellm_params: {tpm: fast}\n"}
    with pytest.raises(LiteLLMConfigError) as caught:
        model_capacities("include: [models.yaml]\n", files.__getitem__)
    assert caught.value.path == "include 'models.yaml': model_list[0].litellm_params.tpm"


# -- values that are not a number -----------------------------------------------------------


def test_an_environment_reference_is_a_clear_error_naming_the_entry():
    error = refused(
        """
        model_list:
          - model_name: ok
            litellm_params: {model: a, tpm: 5}
          - model_name: gpt-4o
            litellm_params:
              model: azure/gpt-4o
              tpm: os.environ/GPT4O_TPM
        """
    )
    assert error.path == "model_list[1].litellm_params.tpm"
    assert "'os.environ/GPT4O_TPM'" in str(error)
    assert "'gpt-4o'" in str(error)
    assert "environment variable" in str(error)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"100000"', "'100000'"),
        ("1.5", "1.5"),
        ("100000.0", "100000.0"),
        ("true", "True"),
        ("[1, 2]", "[1, 2]"),
        ("{a: 1}", "{'a': 1}"),
        ("fast", "'fast'"),
    ],
)
def test_a_capacity_that_is_not_a_whole_number_is_refused(value: str, says: str):
    error = refused(f"model_list:\n  - model_name: m\n    litellm_params: {{model: x}}\n    rpm: {value}\n")
    assert error.path == "model_list[0].rpm"
    assert says in str(error)
    assert "not a whole number" in str(error)


@pytest.mark.parametrize("value", ["0", "-5", str(CAPACITY_MAX + 1)])
def test_a_capacity_out_of_range_is_refused(value: str):
    error = refused(
        f"model_list:\n  - model_name: m\n    litellm_params: {{model: x}}\n    model_info: {{tpm: {value}}}\n"
    )
    assert error.path == "model_list[0].model_info.tpm"
    assert "out of range" in str(error)


# -- not a LiteLLM config -----------------------------------------------------------------


def test_bad_yaml_names_line_and_column():
    error = refused("model_list:\n  - model_name: m\n    litellm_params: {model: x\n")
    assert error.path.startswith("line ")
    assert "column" in error.path
    assert "not valid YAML" in str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("", "config", "empty"),
        ("# only a comment\n", "config", "empty"),
        ("- model_name: m\n", "config", "a list"),
        ("just text", "config", "text"),
        ("general_settings: {master_key: sk-1}\n", "model_list", "missing"),
        ("model_list: {model_name: m}\n", "model_list", "a mapping"),
        ("model_list: gpt-4o\n", "model_list", "text"),
        ("model_list:\n  - gpt-4o\n", "model_list[0]", "text"),
        ("model_list:\n  - litellm_params: {model: x}\n", "model_list[0].model_name", "got nothing"),
        ("model_list:\n  - model_name: 42\n    litellm_params: {model: x}\n", "model_list[0].model_name", "a number"),
        ("model_list:\n  - model_name: ''\n    litellm_params: {model: x}\n", "model_list[0].model_name", "text"),
        ("model_list:\n  - model_name: m\n", "model_list[0].litellm_params", "got nothing"),
        ("model_list:\n  - model_name: m\n    litellm_params: [x]\n", "model_list[0].litellm_params", "a list"),
        (
            "model_list:\n  - model_name: m\n    litellm_params: {model: x}\n    model_info: 3\n",
            "model_list[0].model_info",
            "a number",
        ),
        ("include: models.yaml\n", "include", "list of file names"),
    ],
)
def test_wrong_shapes_are_refused_with_the_path(text: str, path: str, says: str):
    error = refused(text)
    assert error.path == path
    assert says in error.problem
    assert str(error).startswith(f"{path}: ")


def test_a_model_name_the_ledger_cannot_take_is_refused():
    error = refused(f"model_list:\n  - model_name: {'m' * 257}\n    litellm_params: {{model: x}}\n")
    assert error.path == "model_list[0].model_name"


def test_a_config_beyond_the_size_bound_is_refused_before_parsing():
    error = refused("#" * (CONFIG_CHARS_MAX + 1))
    assert error.path == "config"
    assert str(CONFIG_CHARS_MAX) in str(error)


# -- model groups ---------------------------------------------------------------------------


def test_an_alias_group_records_its_deployments_priced_models_base_model_first():
    capacities = config(
        """
        model_list:
          - model_name: team-gpt
            litellm_params: {model: gpt-4o, rpm: 2}
          - model_name: team-gpt
            litellm_params: {model: azure/my-deployment, base_model: azure/gpt-4o-mini}
          - model_name: gpt-4
            litellm_params: {model: azure/gpt4-prod}
            model_info: {base_model: azure/gpt-4-turbo}
          - model_name: gpt-4o
            litellm_params: {model: openai/gpt-4o, tpm: 10}
          - model_name: plain
            litellm_params: {model: plain}
        """
    )
    found = by_name(capacities)
    assert found["team-gpt"].alias_models == ("gpt-4o", "azure/gpt-4o-mini")
    assert found["gpt-4"].alias_models == ("azure/gpt-4-turbo",)
    assert found["gpt-4o"].alias_models is None  # its own model, with its provider
    assert [model.model_name for model in capacities.to_import] == ["team-gpt", "gpt-4", "gpt-4o"]
    assert capacities.without_limits == ("gpt-4", "plain")


def test_a_deployment_without_a_model_or_with_one_from_the_environment_is_refused():
    missing = refused("model_list:\n  - model_name: m\n    litellm_params: {tpm: 1}\n")
    assert missing.path == "model_list[0].litellm_params.model"
    hidden = refused("model_list:\n  - model_name: m\n    litellm_params: {model: os.environ/MODEL}\n")
    assert "environment variable" in str(hidden)
