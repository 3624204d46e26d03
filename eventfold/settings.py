"""Configuration from the environment (`EVENTFOLD_*`), one settings class per concern.

Defaults need nothing set: SQLite files under `.eventfold/` and a broker on
127.0.0.1:9092 (what `eventfold dev` starts).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="EVENTFOLD_", extra="ignore")


class KafkaSettings(BaseSettings):
    model_config = _ENV

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Idempotent producers (acks=all) are the safe default for Apache Kafka; a
    # broker that cannot grant producer ids (the embedded Tansu) needs this off,
    # which `eventfold dev` does for it.
    kafka_idempotence: bool = True
    # Read partition ends off a fetch response instead of ListOffsets, for
    # brokers whose ListOffsets "latest" is wrong (the embedded Tansu).
    kafka_highwater_from_fetch: bool = False
    # How long a fetch waits at the broker for records. Apache Kafka answers as
    # soon as a record arrives, so this only paces idle fetches. The embedded
    # Tansu holds every fetch for its whole wait and needs longer to answer
    # the more batches a partition holds, so it gets a longer one (see
    # eventfold/broker.py and the README's broker quirks).
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL takes PLAIN,
    # SCRAM-SHA-256 or SCRAM-SHA-512 with a user and password. SSL verifies the
    # brokers against the CA file (the system's CAs when unset).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_prefix: str = "eventfold"
    partitions: int = Field(default=4, ge=1, le=1024)
    # Unset: min(3, brokers in the cluster), and min.insync.replicas min(2, RF),
    # so an acknowledged event survives the loss of any one broker.
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    request_timeout_ms: int = Field(default=4000, ge=100)
    linger_ms: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"EVENTFOLD_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "EVENTFOLD_KAFKA_SASL_USERNAME and EVENTFOLD_KAFKA_SASL_PASSWORD"
            )
        return self

    def topic(self, stream_type: str) -> str:
        return f"{self.topic_prefix}.{stream_type}.events"


class DatabaseSettings(BaseSettings):
    model_config = _ENV

    write_db_url: str = "sqlite+aiosqlite:///.eventfold/write.db"
    read_db_url: str = "sqlite+aiosqlite:///.eventfold/read.db"
    db_pool_size: int = Field(default=10, ge=1, le=200)

    @field_validator("write_db_url", "read_db_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        """Accept plain `postgresql://` URLs and give them the async driver."""
        from eventfold.db import async_url

        return async_url(url)


class CommandApiSettings(BaseSettings):
    model_config = _ENV

    host: str = "127.0.0.1"
    command_port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=64 * 1024, ge=256)
    # A refused body up to this size is read to its end before the 413, so the
    # client, still writing, can read the answer; past it the connection is closed.
    max_body_drain_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # POST /commands: how many commands one request may carry, and its body
    # limit (in place of max_body_bytes, which is sized for one command).
    command_batch_max: int = Field(default=1000, ge=1, le=100_000)
    command_batch_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=256)
    batch_max: int = Field(default=512, ge=1, le=10_000)
    # Group-commit transactions in flight at once (PostgreSQL; SQLite uses one):
    # while one waits on the database, the next batch is already being decided.
    commit_concurrency: int = Field(default=2, ge=1, le=16)
    commit_retries: int = Field(default=8, ge=1)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    relay_interval_s: float = Field(default=1.0, gt=0)
    relay_grace_s: float = Field(default=10.0, ge=0)
    relay_batch: int = Field(default=2000, ge=1)
    # The outbox is vacuumed by the service (PostgreSQL) at most this often, once
    # at least outbox_vacuum_rows rows were cleared since the last time; 0 leaves
    # it to autovacuum alone. See command_api/pg.py for why.
    outbox_vacuum_interval_s: float = Field(default=1.0, ge=0)
    outbox_vacuum_rows: int = Field(default=1000, ge=1)
    # Where `/` of the command API sends a browser: the query API's console
    # (`http://host:8001/console`) when set, else the command API's own /docs.
    console_url: str = ""


class QueryApiSettings(BaseSettings):
    model_config = _ENV

    host: str = "127.0.0.1"
    query_port: int = Field(default=8001, ge=1, le=65535)
    wait_timeout_default_s: float = Field(default=5.0, gt=0)
    wait_timeout_max_s: float = Field(default=30.0, gt=0)
    # Live subscriptions (SSE and WebSocket): an idle stream gets a heartbeat this
    # often, so proxies keep it open; a subscriber with this many changes unsent
    # is too slow and is disconnected (the others never wait for it).
    live_heartbeat_s: float = Field(default=15.0, gt=0)
    live_buffer: int = Field(default=256, ge=1)
    # How often the change feed is read when no NOTIFY wakes it (SQLite, or the
    # listen connection lost), and as a fallback while listening.
    live_poll_s: float = Field(default=0.05, gt=0)
    live_fallback_s: float = Field(default=1.0, gt=0)
    # Subscriptions one WebSocket connection may hold at once.
    live_subscriptions_per_socket: int = Field(default=100, ge=1)


class ProjectorSettings(BaseSettings):
    model_config = _ENV

    projector_batch_max: int = Field(default=5000, ge=1)
    # Replays and rebuilds own their tables, so bigger transactions help, up
    # to memory: a replay holds the batch it writes and the next one decoded.
    # 1M events: 10,000 gave 23.4 s and 306 MB peak per process, 5,000
    # 25.7 s and 229 MB (bench/results/2026-12-07-only-raw-projector*.json).
    projector_replay_batch_max: int = Field(default=5_000, ge=1)
    # Processes of `eventfold replay`, each taking some partitions. 0: one per
    # core, at most 4, on PostgreSQL; SQLite has one writer, so there one.
    projector_replay_workers: int = Field(default=0, ge=0, le=64)
    # A running replay renews its claim on the projection this often (a quarter
    # of it); a claim older than this was left by a replay that died, and the
    # live projector takes the projection back.
    projector_replay_lease_s: float = Field(default=60.0, gt=0)
    # Processes of `eventfold serve projector`, members of one consumer group
    # that share the partitions (one Python process applies on one core).
    # 0: one per core, at most 4, on PostgreSQL; SQLite has one writer, so
    # there one. In a container with a CPU limit, set it to that limit.
    projector_processes: int = Field(default=0, ge=0, le=64)
    projector_poll_ms: int = Field(default=200, ge=1)
    projector_session_timeout_ms: int = Field(default=10_000, ge=1000)
    projector_heartbeat_ms: int = Field(default=1_000, ge=100)
    # After a stop signal, how long the projector (and the reactors and
    # process managers) wait for their batches and handlers to finish and
    # commit before they cancel what is still running (a group join the
    # broker never answers would otherwise keep the process alive).
    projector_stop_grace_s: float = Field(default=15.0, gt=0)
    # 0: no HTTP port. Otherwise /healthz, /readyz and /metrics on host:port.
    projector_metrics_port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"
    # How long the change feed keeps a change: a live subscriber that was
    # disconnected for longer resumes with a reset (the current state), not a gap.
    change_retention_s: float = Field(default=3600.0, gt=0)
    # Commands a process manager has in flight at once, each for a different
    # instance (one instance's commands go one after another, in order).
    process_send_concurrency: int = Field(default=32, ge=1, le=1024)


class AuthSettings(BaseSettings):
    model_config = _ENV

    # Browser origins allowed to call the APIs (comma-separated); empty: no CORS.
    cors_origins: str = ""

    # Turning authentication off must be said out loud; the services warn at start.
    auth_disabled: bool = False
    # A JSON list of {"id", "sha256", "scopes", "expires_at"} entries, or a file of it
    # (`eventfold keys create` prints both a token and its entry).
    api_keys: str = "[]"
    api_keys_file: Path | None = None


class Settings(BaseSettings):
    """All concerns together, for the wiring code that needs several."""

    model_config = _ENV

    # The App to serve, as package.module:attribute (the bank example by default).
    app: str = "examples.bank:app"
    data_dir: Path = Path(".eventfold")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    command_api: CommandApiSettings = Field(default_factory=CommandApiSettings)
    query_api: QueryApiSettings = Field(default_factory=QueryApiSettings)
    projector: ProjectorSettings = Field(default_factory=ProjectorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    # How often a long-running process gives its C heap's free memory back to
    # the system (eventfold/heap.py); 0 never.
    heap_trim_interval_s: float = Field(default=30.0, ge=0.0, le=86_400.0)

    def to_env(self) -> dict[str, str]:
        """These settings as `EVENTFOLD_*` variables, for a child process."""
        env = {
            "EVENTFOLD_APP": self.app,
            "EVENTFOLD_DATA_DIR": str(self.data_dir),
            "EVENTFOLD_HEAP_TRIM_INTERVAL_S": str(self.heap_trim_interval_s),
        }
        for part in (self.kafka, self.db, self.command_api, self.query_api, self.projector, self.auth):
            for name, value in part.model_dump().items():
                if value is None:
                    continue
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                env[f"EVENTFOLD_{name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return env


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests pass their own instead."""
    return Settings()
