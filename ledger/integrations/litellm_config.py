"""Model capacities from a LiteLLM proxy ``config.yaml``, for ``spend-ledger limits import``.
Pure: the config's text in, each ``model_name``'s TPM/RPM and priced models out (included
files are read through a function the caller passes).

A ``model_name`` is a group, often an alias (``team-gpt`` for ``litellm_params.model:
gpt-4o``): admission counts rate shares on the group and prices a call as its deployments'
models, each read where LiteLLM's cost tracking reads it: ``model_info.base_model``, else
``litellm_params.base_model``, else ``litellm_params.model``.

Where LiteLLM's router finds a deployment's capacity (``Router._set_model_group_info``):
the ``model_list`` entry's own ``tpm``/``rpm``, else its ``litellm_params``, else its
``model_info``; the first found wins. A ``model_name`` served by several deployments has
their capacities added up; a deployment without one adds nothing. We read them the same
way, but refuse what LiteLLM would resolve or coerce at start-up (``os.environ/X``,
quoted or fractional numbers): the ledger's limit must be the number written in the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]

from ledger.domain.events import MODEL_NAME_CHARS_MAX
from ledger.domain.model_groups import DEPLOYMENT_MODELS_MAX
from ledger.domain.rate_shares import CAPACITY_MAX

CONFIG_CHARS_MAX = 10_000_000
DEPLOYMENTS_MAX = 10_000
INCLUDES_MAX = 100
# Where a deployment's capacity may sit, in the order LiteLLM's router looks: the entry itself first.
CAPACITY_PLACES: tuple[str | None, ...] = (None, "litellm_params", "model_info")
# Where a deployment's priced model may sit, in the order LiteLLM's cost tracking looks.
PRICED_MODEL_PLACES: tuple[tuple[str, str], ...] = (
    ("model_info", "base_model"),
    ("litellm_params", "base_model"),
    ("litellm_params", "model"),
)
ENVIRONMENT_PREFIX = "os.environ/"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

Dimension = Literal["tpm", "rpm"]
ReadInclude = Callable[[str], str]


class LiteLLMConfigError(ValueError):
    """A config the import cannot read; ``path`` says where (``model_list[1].litellm_params.tpm``,
    or ``line 3, column 7`` for a YAML syntax error)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class ModelCapacity:
    """A ``model_name``'s capacity: its deployments' ``tpm`` and ``rpm`` added up (None
    when none of them has one), how many deployments gave each, and the models they are
    priced as (distinct, in order)."""

    model_name: str
    tpm: int | None
    rpm: int | None
    deployments: int
    tpm_deployments: int
    rpm_deployments: int
    models: tuple[str, ...] = ()

    @property
    def has_limits(self) -> bool:
        return self.tpm is not None or self.rpm is not None

    @property
    def is_alias(self) -> bool:
        """Whether some deployment is priced as another model than the group's name
        (``openai/gpt-4o`` under ``gpt-4o`` is the group's own model, with its provider)."""
        return any(model != self.model_name and not model.endswith(f"/{self.model_name}") for model in self.models)

    @property
    def alias_models(self) -> tuple[str, ...] | None:
        """The models to record for the group: an alias's; None for a group that is its model."""
        return self.models if self.is_alias else None


@dataclass(frozen=True)
class ConfigCapacities:
    """Every ``model_name`` of the config's ``model_list``, in the order they first appear."""

    models: tuple[ModelCapacity, ...]

    @property
    def with_limits(self) -> tuple[ModelCapacity, ...]:
        return tuple(model for model in self.models if model.has_limits)

    @property
    def to_import(self) -> tuple[ModelCapacity, ...]:
        """The groups with a capacity or whose models are aliased: what the import records."""
        return tuple(model for model in self.models if model.has_limits or model.is_alias)

    @property
    def without_limits(self) -> tuple[str, ...]:
        """Model names none of whose deployments has a capacity: nothing to import."""
        return tuple(model.model_name for model in self.models if not model.has_limits)


@dataclass
class _Sums:
    deployments: int = 0
    tpm: int | None = None
    rpm: int | None = None
    tpm_deployments: int = 0
    rpm_deployments: int = 0
    models: dict[str, None] = field(default_factory=dict)


def model_capacities(config_text: str, read_include: ReadInclude | None = None) -> ConfigCapacities:
    """Each ``model_name`` of a LiteLLM proxy config with its deployments' TPM/RPM summed.

    ``read_include`` returns the text of a file the config names under ``include`` (LiteLLM
    appends their ``model_list`` to the config's); without it such a config is refused
    rather than read in part. Raises ``LiteLLMConfigError`` naming where the problem is.
    """
    config = _load(config_text, "")
    entries = _model_list(config, "", required="include" not in config)
    located = [(f"model_list[{index}]", entry) for index, entry in enumerate(entries)]
    for name, text in _includes(config, read_include):
        where = f"include {name!r}: "
        included = _load(text, where)
        located += [
            (f"{where}model_list[{index}]", entry) for index, entry in enumerate(_model_list(included, where, False))
        ]
    if len(located) > DEPLOYMENTS_MAX:
        raise LiteLLMConfigError(
            "model_list", f"{len(located)} deployments; the import reads at most {DEPLOYMENTS_MAX}"
        )
    sums: dict[str, _Sums] = {}
    for path, entry in located:
        model_name, tpm, rpm = _deployment(path, entry)
        found = sums.setdefault(model_name, _Sums())
        found.deployments += 1
        found.models[_priced_model(path, entry, model_name)] = None
        if len(found.models) > DEPLOYMENT_MODELS_MAX:
            raise LiteLLMConfigError(
                "model_list", f"{model_name!r} has over {DEPLOYMENT_MODELS_MAX} distinct deployment models"
            )
        if tpm is not None:
            found.tpm = (found.tpm or 0) + tpm
            found.tpm_deployments += 1
        if rpm is not None:
            found.rpm = (found.rpm or 0) + rpm
            found.rpm_deployments += 1
    for model_name, found in sums.items():
        for dimension, total in (("tpm", found.tpm), ("rpm", found.rpm)):
            if total is not None and total > CAPACITY_MAX:
                raise LiteLLMConfigError(
                    "model_list",
                    f"the deployments of {model_name!r} add up to {total} {dimension}, "
                    f"more than the ledger takes ({CAPACITY_MAX})",
                )
    return ConfigCapacities(
        tuple(
            ModelCapacity(
                name,
                found.tpm,
                found.rpm,
                found.deployments,
                found.tpm_deployments,
                found.rpm_deployments,
                tuple(found.models),
            )
            for name, found in sums.items()
        )
    )


def _load(text: str, where: str) -> dict[str, Any]:
    if len(text) > CONFIG_CHARS_MAX:
        raise LiteLLMConfigError(
            f"{where}config", f"{len(text)} characters; the import reads at most {CONFIG_CHARS_MAX}"
        )
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "config"
        problem = getattr(exc, "problem", None) or str(exc)
        raise LiteLLMConfigError(f"{where}{at}", f"not valid YAML: {problem}") from exc
    if config is None:
        raise LiteLLMConfigError(f"{where}config", "empty; expected a LiteLLM proxy config with a model_list")
    if not isinstance(config, dict):
        raise LiteLLMConfigError(
            f"{where}config",
            f"expected a mapping with a model_list, got {_kind(config)} (is this LiteLLM's config.yaml?)",
        )
    return config


def _model_list(config: Mapping[str, Any], where: str, required: bool) -> list[Any]:
    if "model_list" not in config:
        if not required:
            return []
        raise LiteLLMConfigError(
            f"{where}model_list", "missing: a LiteLLM proxy config lists its deployments under model_list"
        )
    entries = config["model_list"]
    if entries is None:  # ``model_list:`` with nothing under it; LiteLLM starts with no models
        return []
    if not isinstance(entries, list):
        raise LiteLLMConfigError(f"{where}model_list", f"expected a list of deployments, got {_kind(entries)}")
    return entries


def _includes(config: Mapping[str, Any], read_include: ReadInclude | None) -> list[tuple[str, str]]:
    """The texts of the files the config includes (none if it has no ``include``)."""
    if "include" not in config:
        return []
    names = config["include"]
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise LiteLLMConfigError("include", f"expected a list of file names, got {_kind(names)}")
    if len(names) > INCLUDES_MAX:
        raise LiteLLMConfigError("include", f"{len(names)} files; the import reads at most {INCLUDES_MAX}")
    if read_include is None:
        raise LiteLLMConfigError("include", f"the config includes {names}; read it with those files at hand")
    return [(name, read_include(name)) for name in names]


def _deployment(path: str, entry: Any) -> tuple[str, int | None, int | None]:
    """One ``model_list`` entry's model name and its own tpm and rpm (None: not given)."""
    if not isinstance(entry, dict):
        raise LiteLLMConfigError(path, f"expected a deployment (model_name, litellm_params), got {_kind(entry)}")
    model_name = entry.get("model_name")
    if not isinstance(model_name, str) or not model_name.strip():
        got = "nothing" if model_name is None else _kind(model_name)
        raise LiteLLMConfigError(f"{path}.model_name", f"expected the name calls use, got {got}")
    if len(model_name) > MODEL_NAME_CHARS_MAX or _CONTROL_CHARACTERS.search(model_name):
        raise LiteLLMConfigError(
            f"{path}.model_name", f"not a model name the ledger takes (1..{MODEL_NAME_CHARS_MAX} printable characters)"
        )
    if not isinstance(entry.get("litellm_params"), dict):
        got = "nothing" if entry.get("litellm_params") is None else _kind(entry["litellm_params"])
        raise LiteLLMConfigError(
            f"{path}.litellm_params", f"expected a mapping (model, api_key, ...) for {model_name!r}, got {got}"
        )
    if entry.get("model_info") is not None and not isinstance(entry["model_info"], dict):
        raise LiteLLMConfigError(
            f"{path}.model_info", f"expected a mapping for {model_name!r}, got {_kind(entry['model_info'])}"
        )
    return model_name, _capacity(path, entry, "tpm", model_name), _capacity(path, entry, "rpm", model_name)


def _priced_model(path: str, entry: Mapping[str, Any], model_name: str) -> str:
    """The model a deployment is priced as: the first of ``PRICED_MODEL_PLACES`` given."""
    for place, name in PRICED_MODEL_PLACES:
        value = (entry.get(place) or {}).get(name)
        if value is None:
            continue
        where = f"{path}.{place}.{name}"
        if not isinstance(value, str) or not value.strip():
            raise LiteLLMConfigError(where, f"expected the model {model_name!r} calls, got {_kind(value)}")
        if value.strip().startswith(ENVIRONMENT_PREFIX):
            raise LiteLLMConfigError(where, f"{value!r} names an environment variable; the import reads only the file")
        if len(value) > MODEL_NAME_CHARS_MAX or _CONTROL_CHARACTERS.search(value):
            raise LiteLLMConfigError(where, f"not a model name the ledger takes (1..{MODEL_NAME_CHARS_MAX} printable)")
        return value
    raise LiteLLMConfigError(f"{path}.litellm_params.model", f"missing: the model {model_name!r} calls")


def _capacity(path: str, entry: Mapping[str, Any], dimension: Dimension, model_name: str) -> int | None:
    """The first ``tpm`` or ``rpm`` LiteLLM's router would read for this deployment."""
    for place in CAPACITY_PLACES:
        holder = entry if place is None else (entry.get(place) or {})
        value = holder.get(dimension)
        if value is None:
            continue
        where = f"{path}.{dimension}" if place is None else f"{path}.{place}.{dimension}"
        return _whole_number(where, value, model_name)
    return None


def _whole_number(where: str, value: Any, model_name: str) -> int:
    of = f"(a deployment of {model_name!r})"
    if isinstance(value, str) and value.strip().startswith(ENVIRONMENT_PREFIX):
        raise LiteLLMConfigError(
            where,
            f"{value!r} {of} names an environment variable; the import reads only the file: "
            "write the number, or set it with `spend-ledger limits set`",
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise LiteLLMConfigError(where, f"{value!r} {of} is not a whole number, e.g. 100000")
    if not 1 <= value <= CAPACITY_MAX:
        raise LiteLLMConfigError(where, f"{value} {of} is out of range 1..{CAPACITY_MAX}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}
    found = names.get(type(value), type(value).__name__)
    return f"{found} ({value!r})" if isinstance(value, str | int | float) and len(repr(value)) <= 40 else found
