"""Secrets in settings stay out of reprs, errors and logs; an api without a master key
serves loopback only. No process is started and no address is bound here."""

from __future__ import annotations

import gc
import logging
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ledger.api.auth import Keys
from ledger.cli.main import app
from ledger.cli.serve import is_loopback
from ledger.settings import Settings, load_settings

MASTER = "sk-master-key-0123456789abcdef"
INGEST = "sk-ingest-key-0123456789abcdef"
SASL_PASSWORD = "sasl-password-0123456789"
SHORT_KEY = "typo-master-k3y"  # 15 characters: one short of the minimum


def clear_ledger_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SPEND_LEDGER_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


def test_every_rendering_of_the_settings_masks_the_keys_and_the_sasl_password():
    settings = Settings(
        master_key=MASTER,
        ingest_key=INGEST,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="ledger",
        kafka_sasl_password=SASL_PASSWORD,
    )
    renderings = {
        "repr": repr(settings),
        "str": str(settings),
        "format": f"{settings}",
        "model_dump": repr(settings.model_dump()),
        "model_dump_json": settings.model_dump_json(),
    }
    for how, text in renderings.items():
        for secret in (MASTER, INGEST, SASL_PASSWORD):
            assert secret not in text, how
        assert "**********" in text, how  # masked, not left out
    assert settings.master_key is not None
    assert settings.master_key.get_secret_value() == MASTER


def test_logging_the_settings_at_any_level_shows_no_secret(caplog):
    settings = Settings(master_key=MASTER, ingest_key=INGEST, kafka_sasl_password=SASL_PASSWORD)
    logger = logging.getLogger("test_security_settings")
    with caplog.at_level(logging.DEBUG, logger="test_security_settings"):
        logger.debug("settings: %s", settings)
        logger.info("settings: %r", settings)
        logger.warning("fields: %s", settings.model_dump())
    assert len(caplog.records) == 3
    assert "master_key" in caplog.text
    for secret in (MASTER, INGEST, SASL_PASSWORD):
        assert secret not in caplog.text


def test_the_faust_sasl_credentials_do_not_show_the_password():
    from streams.faust_kafka import faust_credentials

    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="ledger",
        kafka_sasl_password=SASL_PASSWORD,
    )
    credentials = faust_credentials(settings)
    assert "ledger" in repr(credentials)
    assert SASL_PASSWORD not in repr(credentials)
    assert SASL_PASSWORD not in str(credentials)


def test_the_api_keys_object_does_not_show_its_keys():
    keys = Keys(master=MASTER, ingest=INGEST)
    for text in (repr(keys), str(keys), f"{keys!r}"):
        assert MASTER not in text
        assert INGEST not in text
    assert (keys.master, keys.ingest) == (MASTER, INGEST)


@pytest.mark.parametrize("name", ["master_key", "ingest_key"])
def test_a_key_too_short_is_refused_without_echoing_it(name):
    with pytest.raises(ValidationError) as refused:
        Settings(**{name: SHORT_KEY})
    message = str(refused.value)
    assert name in message
    assert "at least 16" in message
    assert SHORT_KEY not in message
    assert SHORT_KEY not in repr(refused.value)


def test_an_invalid_value_of_any_setting_is_named_but_not_echoed(monkeypatch):
    monkeypatch.setenv("SPEND_LEDGER_TOPIC_PREFIX", "pasted key sk-0123")
    with pytest.raises(ValidationError) as refused:
        load_settings()
    assert "topic_prefix" in str(refused.value)
    assert "pasted key sk-0123" not in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "arguments"),
    [
        ("SPEND_LEDGER_MASTER_KEY", ["api", "--port", "0"]),
        ("SPEND_LEDGER_MASTER_KEY", ["budgets", "list"]),  # the client commands escape the error text
        ("SPEND_LEDGER_INGEST_KEY", ["check", "--team", "ml"]),
        ("SPEND_LEDGER_MASTER_KEY", ["worker"]),
        ("SPEND_LEDGER_MASTER_KEY", ["dev"]),
    ],
)
def test_a_command_refusing_a_short_key_does_not_print_it(monkeypatch, variable, arguments):
    clear_ledger_environment(monkeypatch)
    monkeypatch.setenv(variable, SHORT_KEY)
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert "invalid settings" in result.output
    assert variable.removeprefix("SPEND_LEDGER_").lower() in result.output
    assert SHORT_KEY not in result.output


# -- an api without a master key serves loopback only ---------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "0", "10.0.0.5", "192.168.1.20", "2001:db8::1", "example.com", "localhost.example.com", ""],
)
def test_any_other_address_or_name_is_not_loopback(host):
    assert not is_loopback(host)


class FakeServer:
    """Stands in for ``uvicorn.Server``: records what it would serve, binds nothing."""

    served: ClassVar[list[Any]] = []

    def __init__(self, config: Any) -> None:
        self.config = config
        self.started = True

    def run(self) -> None:
        FakeServer.served.append(self.config)


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> type[FakeServer]:
    import uvicorn

    clear_ledger_environment(monkeypatch)
    FakeServer.served = []
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    monkeypatch.setattr(gc, "set_threshold", lambda *thresholds: None)  # the api tunes its own process's gc
    return FakeServer


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com", "0"])
@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_the_api_without_a_master_key_refuses_any_address_but_loopback(fake_server, monkeypatch, host, given_by):
    arguments = ["api", "--port", "0"]
    if given_by == "option":
        arguments += ["--host", host]
    else:
        monkeypatch.setenv("SPEND_LEDGER_API_HOST", host)
    monkeypatch.setenv("SPEND_LEDGER_INGEST_KEY", INGEST)  # an ingest key alone does not count
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"refusing to serve on {host} without a master key" in output
    assert fake_server.served == []
    assert INGEST not in result.output


def test_the_api_without_a_master_key_serves_loopback_with_every_route_open(fake_server):
    result = CliRunner().invoke(app, ["api", "--host", "127.0.0.1", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "every route is open (loopback only)" in result.output
    (config,) = fake_server.served
    assert config.host == "127.0.0.1"


def test_the_api_with_a_master_key_may_serve_any_address(fake_server, monkeypatch):
    monkeypatch.setenv("SPEND_LEDGER_MASTER_KEY", MASTER)
    result = CliRunner().invoke(app, ["api", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    (config,) = fake_server.served
    assert config.host == "0.0.0.0"
    assert "every route is open" not in result.output
    assert MASTER not in result.output
