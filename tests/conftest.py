"""Fixtures over real parts: a broker process and a PostgreSQL database.

The broker is a 3-node Apache Kafka cluster (KRaft, jars from Maven Central,
started by `eventfold.apache_kafka`) where Java is present, else the embedded
Tansu process; `EVENTFOLD_TEST_BROKER=apache|tansu` picks one, and the test
session's header says which runs. PostgreSQL is the one at 127.0.0.1:5432
(`EVENTFOLD_TEST_PG_URL` overrides; `make test` brings it up). With
`EVENTFOLD_TEST_DOCKER=1` and a reachable Docker engine, testcontainers start
apache/kafka and postgres instead (the tests that freeze a broker still use
the local one).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from eventfold.aggregate import Aggregates
from eventfold.apache_kafka import KAFKA_VERSION, ApacheKafkaCluster, java_available
from eventfold.broker import EmbeddedBroker, broker_kafka_settings
from eventfold.kafka import create_topics
from eventfold.migrate import upgrade_all
from eventfold.settings import (
    AuthSettings,
    CommandApiSettings,
    DatabaseSettings,
    KafkaSettings,
    Settings,
)

PG_URL = os.environ.get("EVENTFOLD_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
USE_DOCKER = os.environ.get("EVENTFOLD_TEST_DOCKER") == "1"
BROKER = os.environ.get("EVENTFOLD_TEST_BROKER") or ("apache" if java_available() else "tansu")
if BROKER not in ("apache", "tansu"):
    raise pytest.UsageError(f"EVENTFOLD_TEST_BROKER must be apache or tansu, not {BROKER!r}")

LocalBroker = ApacheKafkaCluster | EmbeddedBroker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the embedded broker, leave out what only a multi-node Apache cluster can show."""
    if BROKER == "apache":
        return
    apache_only = [i for i in items if i.get_closest_marker("apache")]
    if apache_only:
        config.hook.pytest_deselected(items=apache_only)
        items[:] = [i for i in items if not i.get_closest_marker("apache")]


def pytest_report_header(config: pytest.Config) -> str:
    if BROKER == "apache":
        return f"broker: Apache Kafka {KAFKA_VERSION}, 3 KRaft nodes (EVENTFOLD_TEST_BROKER=apache)"
    return "broker: embedded Tansu (EVENTFOLD_TEST_BROKER=tansu)"


def _docker() -> Any:
    """Start containers once per session when asked to; fail loudly if we cannot."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    pg = PostgresContainer("postgres:16-alpine", driver="asyncpg")
    kafka = KafkaContainer("apache/kafka:3.8.0").with_kraft()
    pg.start()
    kafka.start()
    return pg, kafka


@pytest.fixture(scope="session")
def docker_parts() -> Iterator[Any]:
    if not USE_DOCKER:
        yield None
        return
    pg, kafka = _docker()
    try:
        yield pg, kafka
    finally:
        kafka.stop()
        pg.stop()


@pytest.fixture(scope="session")
def broker(docker_parts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The session's broker processes (also started in Docker mode, for pause tests)."""
    folder = tmp_path_factory.mktemp("broker")
    b: LocalBroker
    if BROKER == "apache":
        b = ApacheKafkaCluster(nodes=3, directory=folder)
    else:
        b = EmbeddedBroker(log_path=folder / "broker.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: LocalBroker, docker_parts: Any) -> str:
    if docker_parts is not None:
        return str(docker_parts[1].get_bootstrap_server())
    return broker.bootstrap


@pytest.fixture(scope="session")
def pg_admin_url(docker_parts: Any) -> str:
    if docker_parts is not None:
        return str(docker_parts[0].get_connection_url())
    return PG_URL


async def create_database(admin_url: str, *, migrate: bool = True) -> str:
    """A new PostgreSQL database, migrated unless asked not to; returns its SQLAlchemy URL."""
    url = make_url(admin_url)
    name = f"eventfold_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    db_url = url.set(database=name).render_as_string(hide_password=False)
    if migrate:
        await prepare_stores(db_url, db_url)
    return db_url


async def prepare_stores(write_url: str, read_url: str) -> None:
    """The stores as `eventfold migrate` and a first projector start leave them.

    The migrations create the framework's tables; the projector creates the
    default projections' tables from their declarations, so a test may read
    them (through the query API, say) before it runs a projector.
    """
    from eventfold.db import create_engine
    from projector.live_tables import ensure_live_tables
    from tests.support.bank import default_projections as projections

    await upgrade_all(write_url, read_url)
    engine = create_engine(read_url)
    try:
        for projection in projections():
            await ensure_live_tables(engine, projection)
    finally:
        await engine.dispose()


async def drop_database(admin_url: str, db_url: str) -> None:
    conn = await asyncpg.connect(_dsn(make_url(admin_url)))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(db_url).database}" WITH (FORCE)')
    finally:
        await conn.close()


def _dsn(url: Any) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """One migrated database for the session; tests isolate by unique stream ids."""
    db_url = await create_database(pg_admin_url)
    try:
        yield db_url
    finally:
        await drop_database(pg_admin_url, db_url)


@pytest.fixture
async def fresh_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of the test's own, for tests that compare whole tables."""
    db_url = await create_database(pg_admin_url)
    try:
        yield db_url
    finally:
        await drop_database(pg_admin_url, db_url)


@pytest.fixture
def own_pg(fresh_pg_url: str) -> DatabaseSettings:
    """Write and read store in one database of the test's own."""
    return DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url)


@pytest.fixture(params=["postgres", "sqlite"])
async def own_db(
    request: pytest.FixtureRequest, pg_admin_url: str, tmp_path: Path
) -> AsyncIterator[DatabaseSettings]:
    """Write and read stores no other test touches, so whole tables can be compared."""
    if request.param == "sqlite":
        yield await migrated_sqlite(tmp_path)
        return
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)


async def migrated_sqlite(directory: Path) -> DatabaseSettings:
    db = DatabaseSettings(
        write_db_url=f"sqlite+aiosqlite:///{directory / 'write.db'}",
        read_db_url=f"sqlite+aiosqlite:///{directory / 'read.db'}",
    )
    await prepare_stores(db.write_db_url, db.read_db_url)
    return db


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> DatabaseSettings:
    return await migrated_sqlite(tmp_path)


@pytest.fixture(params=["postgres", "sqlite"])
async def db(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> DatabaseSettings:
    """Both backends of the stores, for contract-style tests."""
    if request.param == "postgres":
        return DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url)
    return await migrated_sqlite(tmp_path)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    kafka_bootstrap: str, pg_url: str, docker_parts: Any, broker: LocalBroker
) -> SettingsFactory:
    """Settings for one test: its own topic prefix, the session broker and database."""
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def build(db: DatabaseSettings | None = None, **overrides: Any) -> Settings:
        kafka = {
            **broker_kafka_settings(broker),
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": prefix,
            "partitions": 4,
            "publish_timeout_s": 3.0,
            "request_timeout_ms": 2000,
        }
        kafka.update(overrides.pop("kafka", {}))
        # Authentication is tested on its own (tests/integration/test_auth.py);
        # everywhere else it is turned off explicitly, as a deployment would have to.
        overrides.setdefault("auth", AuthSettings(auth_disabled=True))
        command_api = {"relay_interval_s": 0.2, "relay_grace_s": 2.0}
        command_api.update(overrides.pop("command_api", {}))
        return Settings(
            kafka=KafkaSettings(**kafka),
            db=db or DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url),
            command_api=CommandApiSettings(**command_api),
            **overrides,
        )

    return build


@pytest.fixture
def command_client(
    make_settings: SettingsFactory,
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """`async with command_client(settings, aggregates) as http:` over ASGI, topics created."""
    from contextlib import asynccontextmanager

    from command_api.bootstrap import create_app
    from tests.helpers import app_client
    from tests.support.bank import default_aggregates

    @asynccontextmanager
    async def open_client(
        settings: Settings | None = None, aggregates: Aggregates | None = None
    ) -> AsyncIterator[Any]:
        cfg = settings or make_settings()
        aggs = aggregates or default_aggregates()
        await create_topics(cfg.kafka, [cfg.kafka.topic(a.stream_type) for a in aggs])
        async with app_client(create_app(cfg, aggs)) as client:
            yield client

    return open_client
