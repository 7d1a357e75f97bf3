"""Settings come from SPEND_LEDGER_* variables, with defaults that suit a laptop."""

import pytest
from pydantic import ValidationError

from ledger.settings import load_settings


def test_defaults_suit_the_embedded_broker(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_session_timeout_s == 6.0
    assert settings.dedup_horizon_s == 7 * 86_400
    assert settings.trust_reported_cost is False


def test_kafka_bootstrap_servers_is_read_as_kafka_tooling_expects(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    assert load_settings().kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    monkeypatch.setenv("SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS", "override:9092")
    assert load_settings().kafka_bootstrap_servers == "override:9092"


def test_prefixed_variables_override_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("SPEND_LEDGER_TOPIC_PARTITIONS", "16")
    monkeypatch.setenv("SPEND_LEDGER_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.topic_partitions == 16
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("SPEND_LEDGER_TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="topic_partitions"):
        load_settings()


def test_sasl_ssl_settings_reach_every_kafka_client() -> None:
    import ssl

    import faust

    from ledger.kafka import client_options
    from ledger.settings import Settings
    from streams.faust_kafka import faust_broker_urls, faust_credentials

    settings = Settings(
        kafka_bootstrap_servers="k1:9093,k2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ledger",
        kafka_sasl_password="s3cret",
    )
    options = client_options(settings)
    assert options["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "ledger"
    assert faust_broker_urls(settings.kafka_bootstrap_servers) == "kafka://k1:9093;kafka://k2:9093"
    assert faust_credentials(Settings()) is None


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "needs kafka_security_protocol SASL_PLAINTEXT or SASL_SSL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}, "not SSL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs kafka_sasl_mechanism"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
            "kafka_sasl_password",
        ),
    ],
)
def test_a_sasl_mechanism_and_protocol_that_disagree_are_refused(monkeypatch, variables, message):
    for name, value in variables.items():
        monkeypatch.setenv(f"SPEND_LEDGER_{name}", value)
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_an_unpriced_call_is_refused_by_default_and_a_fallback_estimate_is_read_as_exact_nanos(monkeypatch):
    monkeypatch.delenv("SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD", raising=False)
    assert load_settings().admission_unpriced_estimate_nanos is None  # refuse: never overspend
    monkeypatch.setenv("SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD", "0.0005")
    assert load_settings().admission_unpriced_estimate_nanos == 500_000
    for bad in ("0.0000000001", "0", "-1", "NaN", "1001"):
        monkeypatch.setenv("SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD", bad)
        with pytest.raises(ValidationError, match="admission_unpriced_estimate_usd"):
            load_settings()
