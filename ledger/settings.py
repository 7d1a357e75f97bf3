"""Every setting of the service, in one place: environment variables prefixed
``SPEND_LEDGER_`` (``KAFKA_BOOTSTRAP_SERVERS`` is read too, as Kafka tooling expects)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.domain.money import MoneyError, usd_to_nanos

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
UNPRICED_ESTIMATE_USD_MAX = Decimal(1_000)  # a call's fallback estimate; more is a typo


class Settings(BaseSettings):
    """Service settings. Defaults suit a laptop; production overrides from the environment."""

    # An invalid value is named by field and rule, never echoed: a key one character short
    # must not reach a terminal or a log through the error that refuses it.
    model_config = SettingsConfigDict(
        env_prefix="SPEND_LEDGER_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="comma-separated host:port list",
    )
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    topic_prefix: str = Field(default="spend-ledger.", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")
    topic_partitions: int = Field(default=8, ge=1, le=1024)
    # Replicas of every topic the ledger and its worker create: 1 for one broker, 3 on a cluster.
    topic_replication_factor: int = Field(default=1, ge=1, le=16)
    # The embedded broker holds a JoinGroup for half the session timeout, so dev and tests
    # keep it short; production on Apache Kafka may raise it (Faust's default is 60 s).
    kafka_session_timeout_s: float = Field(default=6.0, gt=0.5, le=300)
    kafka_heartbeat_interval_s: float = Field(default=1.0, gt=0.05, le=60)
    # The embedded broker holds a waiting fetch for its whole wait, even when data arrives.
    kafka_fetch_max_wait_ms: int = Field(default=25, ge=5, le=10_000)

    dedup_horizon_s: int = Field(default=7 * 86_400, ge=60, le=400 * 86_400)
    trust_reported_cost: bool = False
    window_tick_s: float = Field(default=1.0, gt=0.05, le=60)

    # The worker reads up to this many messages, or what arrived within this time, per step.
    worker_batch_messages_max: int = Field(default=500, ge=1, le=100_000)
    worker_batch_within_s: float = Field(default=0.02, gt=0, le=10)
    worker_shutdown_timeout_s: float = Field(default=15.0, gt=0, le=600)
    # Faust's exactly_once needs transactional producers: real Kafka only, not the embedded broker.
    worker_exactly_once: bool = False
    worker_standby_replicas: int = Field(default=1, ge=0, le=8)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    data_dir: Path = Path("data")
    # The store is a DuckLake (ledger.store.location): its catalog in PostgreSQL (unset: the
    # embedded server on <store_path>/catalog), its Parquet files under store_data_path
    # (unset: <store_path>/data/; an s3:// prefix in production).
    store_path: Path = Path("data/store")
    store_catalog: SecretStr | None = Field(default=None, min_length=1, max_length=2_000)
    store_data_path: str | None = Field(default=None, min_length=1, max_length=2_000)
    # Data on S3-compatible storage (store_data_path "s3://bucket/prefix/"): the endpoint
    # (host:port; unset: AWS), the access key, the region and the URL style.
    store_s3_endpoint: str | None = Field(default=None, min_length=1, max_length=500)
    store_s3_key_id: str | None = Field(default=None, min_length=1, max_length=500)
    store_s3_secret: SecretStr | None = Field(default=None, min_length=1, max_length=500)
    store_s3_region: str = Field(default="us-east-1", min_length=1, max_length=100)
    store_s3_url_style: Literal["vhost", "path"] = "vhost"
    store_s3_use_ssl: bool = True
    # POST /v1/sql: the most rows one statement returns and the longest it runs (a request
    # may ask for less).
    sql_rows_max: int = Field(default=10_000, ge=1, le=1_000_000)
    sql_timeout_s: float = Field(default=30.0, gt=0, le=3_600)
    # The writer compacts the lake this often (ledger.store.maintenance); snapshots and
    # replaced files older than the retention go (a reader's query may run that long).
    store_maintenance_every_s: float = Field(default=600.0, ge=1, le=86_400)
    store_snapshot_retention_s: float = Field(default=3_600.0, ge=0, le=30 * 86_400)
    # The projector appends at most this many MiB of messages at once (one lake commit; a
    # larger message goes alone). Larger: fewer commits, more memory (three are in flight).
    store_batch_mib: float = Field(default=48.0, gt=0, le=1_024)

    # The api: admin routes need the master key; /v1/usage and /v1/check take the ingest
    # key too when one is set. Without a master key the api serves loopback only.
    master_key: SecretStr | None = Field(default=None, min_length=16)
    ingest_key: SecretStr | None = Field(default=None, min_length=16)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65_535)

    # Where the CLI and the SDK reach the api.
    api_url: str = Field(default="http://127.0.0.1:8080", max_length=2_000)
    # A budget write answers once the worker has applied it, or after this long (202).
    api_apply_wait_s: float = Field(default=5.0, ge=0, le=60)

    # Admission (DESIGN section 10): a hold not settled or released within the TTL expires;
    # below the saturation threshold a key may borrow unused capacity of a model.
    admission_ttl_s: float = Field(default=600.0, ge=1, le=86_400)
    admission_saturation: float = Field(default=0.8, gt=0, le=1)
    # LiteLLM's format, e.g. {"dev": 0, "prod": 1}: the fraction of a model's TPM/RPM a
    # priority's keys share. Empty: every key weighs 1. The admin route overrides it.
    priority_reservation: dict[str, float] = Field(default_factory=dict, max_length=64)
    # The output tokens an admit assumes when it gives no max_tokens (an upper bound).
    admission_default_max_tokens: int = Field(default=4_096, ge=1, le=10_000_000)
    # What an admit holds for a call whose model has no price (an alias no config names,
    # a new model). Unset: such a call is refused, never run unheld or held as free.
    admission_unpriced_estimate_usd: Decimal | None = Field(
        default=None, gt=0, le=UNPRICED_ESTIMATE_USD_MAX, allow_inf_nan=False
    )
    # Names this api instance on ``admissions``; default: the host and the store's path,
    # so a restarted api owns (and expires) the holds it took before.
    api_instance_id: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
    # The LiteLLM callback charges LiteLLM's own User-Agent tags ("User-Agent: OpenAI/Python
    # 2.54.0") as tag scopes only when set: off, a tag scope per client version is not made.
    litellm_keep_user_agent_tags: bool = False

    @property
    def admission_unpriced_estimate_nanos(self) -> int | None:
        if self.admission_unpriced_estimate_usd is None:
            return None
        return usd_to_nanos(self.admission_unpriced_estimate_usd, exact=True)

    @model_validator(mode="after")
    def _unpriced_estimate_in_nanos(self) -> Self:
        if self.admission_unpriced_estimate_usd is not None:
            try:
                usd_to_nanos(self.admission_unpriced_estimate_usd, exact=True)
            except MoneyError as exc:
                raise ValueError(f"admission_unpriced_estimate_usd: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _reservation_fractions(self) -> Self:
        for name, fraction in self.priority_reservation.items():
            if not 0 <= fraction <= 1:
                raise ValueError(f"priority_reservation[{name!r}] must be a fraction from 0 to 1")
        return self

    @model_validator(mode="after")
    def _sasl_consistent(self) -> Self:
        # aiokafka would connect without SASL and Faust with it: refuse the mix up front.
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if self.kafka_sasl_mechanism is not None and not sasl:
            raise ValueError(
                f"kafka_sasl_mechanism needs kafka_security_protocol SASL_PLAINTEXT or SASL_SSL, "
                f"not {self.kafka_security_protocol}"
            )
        if sasl and (self.kafka_sasl_mechanism is None or not self.kafka_sasl_username or not self.kafka_sasl_password):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_mechanism, "
                "kafka_sasl_username and kafka_sasl_password"
            )
        return self


def load_settings() -> Settings:
    """Settings from the environment (a function, so tests can set variables first)."""
    return Settings()
