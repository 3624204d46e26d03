"""Configuration from the environment (`EVENTFOLD_*`), one settings class per concern.

Defaults need nothing set: SQLite files under `.eventfold/` and a broker on
127.0.0.1:9092 (what `eventfold dev` starts).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="EVENTFOLD_", extra="ignore")


class KafkaSettings(BaseSettings):
    model_config = _ENV

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Idempotent producers are the safe default for real Kafka; the embedded
    # broker cannot grant a producer id, so `eventfold dev` turns this off.
    kafka_idempotence: bool = True
    topic_prefix: str = "eventfold"
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    request_timeout_ms: int = Field(default=4000, ge=100)
    linger_ms: int = Field(default=0, ge=0, le=1000)

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
    batch_max: int = Field(default=512, ge=1, le=10_000)
    # Group-commit transactions in flight at once (PostgreSQL; SQLite uses one):
    # while one waits on the database, the next batch is already being decided.
    commit_concurrency: int = Field(default=2, ge=1, le=16)
    commit_retries: int = Field(default=8, ge=1)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    relay_interval_s: float = Field(default=1.0, gt=0)
    relay_grace_s: float = Field(default=10.0, ge=0)
    relay_batch: int = Field(default=2000, ge=1)


class QueryApiSettings(BaseSettings):
    model_config = _ENV

    host: str = "127.0.0.1"
    query_port: int = Field(default=8001, ge=1, le=65535)
    wait_timeout_default_s: float = Field(default=5.0, gt=0)
    wait_timeout_max_s: float = Field(default=30.0, gt=0)


class ProjectorSettings(BaseSettings):
    model_config = _ENV

    projector_batch_max: int = Field(default=5000, ge=1)
    # Replays and rebuilds own their tables, so bigger transactions only help.
    projector_replay_batch_max: int = Field(default=10_000, ge=1)
    # Processes of `eventfold replay`, each taking some partitions. 0: one per
    # core, at most 4, on PostgreSQL; SQLite has one writer, so there one.
    projector_replay_workers: int = Field(default=0, ge=0, le=64)
    # A running replay renews its claim on the projection this often (a quarter
    # of it); a claim older than this was left by a replay that died, and the
    # live projector takes the projection back.
    projector_replay_lease_s: float = Field(default=60.0, gt=0)
    projector_poll_ms: int = Field(default=200, ge=1)
    projector_session_timeout_ms: int = Field(default=10_000, ge=1000)
    projector_heartbeat_ms: int = Field(default=1_000, ge=100)
    # 0: no HTTP port. Otherwise /healthz, /readyz and /metrics on host:port.
    projector_metrics_port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"


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

    data_dir: Path = Path(".eventfold")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    command_api: CommandApiSettings = Field(default_factory=CommandApiSettings)
    query_api: QueryApiSettings = Field(default_factory=QueryApiSettings)
    projector: ProjectorSettings = Field(default_factory=ProjectorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    def to_env(self) -> dict[str, str]:
        """These settings as `EVENTFOLD_*` variables, for a child process."""
        env = {"EVENTFOLD_DATA_DIR": str(self.data_dir)}
        for part in (self.kafka, self.db, self.command_api, self.query_api, self.projector, self.auth):
            for name, value in part.model_dump().items():
                if value is None:
                    continue
                env[f"EVENTFOLD_{name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return env


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests pass their own instead."""
    return Settings()
