"""The system under test, started on loopback: broker, database, service processes.

Everything here is owned by the harness: a broker on a free port, a PostgreSQL
database of its own (created and dropped), and `eventfold serve ...` child
processes it can SIGKILL and start again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from chaos.mail import MailServer
from eventfold.apache_kafka import ApacheKafkaCluster, java_available
from eventfold.broker import EmbeddedBroker, broker_kafka_settings, free_port
from eventfold.db import create_engine
from eventfold.kafka import create_topics
from eventfold.migrate import upgrade_all
from eventfold.rss import RssSampler
from eventfold.settings import (
    AuthSettings,
    CommandApiSettings,
    DatabaseSettings,
    KafkaSettings,
    ProjectorSettings,
    Settings,
)
from examples.bank import app as bank
from projector.tables import projection_offsets

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("EVENTFOLD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(admin_url: str) -> str:
    """A new, migrated database named `eventfold_chaos_<hex>`; returns its URL."""
    name = f"eventfold_chaos_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_dsn(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = make_url(_dsn(admin_url)).set(database=name).render_as_string(hide_password=False)
    await upgrade_all(url, url)
    return url


async def drop_database(admin_url: str, url: str) -> None:
    conn = await asyncpg.connect(_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await conn.close()


async def database_outage(admin_url: str, url: str, seconds: float) -> int:
    """Refuse connections to one database and drop the open ones, for `seconds`.

    What the services see of a PostgreSQL restart, without touching the other
    databases of a shared server. Returns how many connections were dropped.
    """
    name = make_url(url).database
    conn = await asyncpg.connect(_dsn(admin_url))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await asyncio.sleep(seconds)
        finally:
            await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await conn.close()
    return sum(1 for r in rows if r[0])


def restart_postgres() -> None:
    """Restart the local cluster (needs root); every connection breaks."""
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )


LocalBroker = ApacheKafkaCluster | EmbeddedBroker


def default_broker() -> str:
    """`EVENTFOLD_CHAOS_BROKER` (apache|tansu); Apache Kafka where Java is present."""
    kind = os.environ.get("EVENTFOLD_CHAOS_BROKER") or ("apache" if java_available() else "tansu")
    if kind not in ("apache", "tansu"):
        raise ValueError(f"EVENTFOLD_CHAOS_BROKER must be apache or tansu, not {kind!r}")
    return kind


def chaos_settings(broker: LocalBroker, db_url: str, prefix: str) -> Settings:
    """Short timeouts everywhere, so faults are noticed and healed quickly."""
    return Settings(
        kafka=KafkaSettings(
            **broker_kafka_settings(broker),
            topic_prefix=prefix,
            partitions=4,
            publish_timeout_s=2.0,
            request_timeout_ms=2000,
        ),
        db=DatabaseSettings(write_db_url=db_url, read_db_url=db_url, db_pool_size=10),
        command_api=CommandApiSettings(relay_interval_s=0.5, relay_grace_s=2.0),
        projector=ProjectorSettings(
            projector_session_timeout_ms=6000, projector_poll_ms=50, projector_batch_max=500
        ),
        auth=AuthSettings(auth_disabled=True),
    )


def _die_with_parent() -> None:
    """Linux: a service gets SIGKILL if the harness dies, so no run leaves strays.

    (The signal follows the spawning thread: services are started from the event loop's.)
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """One `eventfold serve <kind>` process, restartable on the same port."""

    name: str
    kind: str  # command-api | publisher | projector | reactors | process-managers
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    rss: RssSampler | None = None  # each start is a new incarnation there
    _log_size: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        argv = [sys.executable, "-m", "eventfold.cli", "serve", self.kind, "--port", str(self.port)]
        self._log_size = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        if self.rss is not None:
            self.rss.watch(self.name, self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Command APIs answer /healthz; projectors log an assignment; the publisher runs."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while True:
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}")
                if self.kind == "command-api":
                    try:
                        if (await http.get(f"{self.url}/healthz", timeout=1)).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                elif self.kind != "projector" or self.log.stat().st_size > self._log_size:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout_s}s; see {self.log}")
                await asyncio.sleep(0.1)


# How long a transfer has to complete before the saga compensates it: short, so
# that faults which stall a transfer make deadlines fire within a chaos run.
TRANSFER_DEADLINE_S = 10.0


class Cluster:
    """Broker (3 Apache Kafka nodes, or the embedded one), database, SMTP server,
    2 command APIs, 1 publisher, 2 projectors, 2 reactor processes (one consumer
    group) and 1 process-manager process."""

    def __init__(
        self,
        workdir: Path,
        *,
        broker: str = "apache",
        command_apis: int = 2,
        projectors: int = 2,
        reactors: int = 2,
    ) -> None:
        self.workdir = workdir
        self.broker: LocalBroker = (
            ApacheKafkaCluster(nodes=3, directory=workdir / "kafka")
            if broker == "apache"
            else EmbeddedBroker(log_path=workdir / "broker.log")
        )
        self.db_url = ""
        self.settings: Settings | None = None
        self.n_command_apis = command_apis
        self.n_projectors = projectors
        self.n_reactors = reactors
        self.mail = MailServer()
        self.services: list[Service] = []
        self.rss = RssSampler(interval_s=1.0)

    def by_kind(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind]

    @property
    def event_topics(self) -> list[str]:
        assert self.settings is not None
        return bank.topics(self.settings.kafka)

    @property
    def command_urls(self) -> list[str]:
        return [s.url for s in self.by_kind("command-api")]

    async def start(self) -> Settings:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.broker.astart()
        self.db_url = await create_database(PG_ADMIN_URL)
        prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.settings = settings = chaos_settings(self.broker, self.db_url, prefix)
        await create_topics(settings.kafka, bank.topics(settings.kafka))
        self.mail.start()
        env = {
            **os.environ,
            **settings.to_env(),
            "PYTHONUNBUFFERED": "1",
            "EVENTFOLD_LOG_LEVEL": "WARNING",
            "EVENTFOLD_APP": "examples.bank:app",
            "EVENTFOLD_SMTP_HOST": "127.0.0.1",
            "EVENTFOLD_SMTP_PORT": str(self.mail.port),
            "BANK_TRANSFER_DEADLINE_S": str(TRANSFER_DEADLINE_S),
        }
        for i in range(self.n_command_apis):
            self.services.append(
                Service(f"command-api-{i}", "command-api", env, self.workdir / f"command-api-{i}.log")
            )
        self.services.append(Service("publisher", "publisher", env, self.workdir / "publisher.log"))
        for i in range(self.n_projectors):
            # INFO, so the assignments show in the log (and the log shows life).
            # One process each: the faults kill, pause and stop the process that applies.
            penv = {**env, "EVENTFOLD_LOG_LEVEL": "INFO", "EVENTFOLD_PROJECTOR_PROCESSES": "1"}
            self.services.append(
                Service(f"projector-{i}", "projector", penv, self.workdir / f"projector-{i}.log")
            )
        for i in range(self.n_reactors):
            self.services.append(
                Service(f"reactors-{i}", "reactors", env, self.workdir / f"reactors-{i}.log")
            )
        self.services.append(
            Service("process-managers", "process-managers", env, self.workdir / "process-managers.log")
        )
        self.rss.start()
        for s in self.services:
            s.rss = self.rss
            s.start()
        await asyncio.gather(*(s.ready() for s in self.services))
        await self._reactors_pinned(settings)
        return settings

    async def _reactors_pinned(self, settings: Settings, timeout_s: float = 60.0) -> None:
        """Wait until every reactor stored where it starts: mails are owed from then on."""
        topics = {t for r in bank.reactors for t in r.topics(settings.kafka)}
        partitions = settings.kafka.partitions * len(topics)
        c = projection_offsets.c
        deadline = time.monotonic() + timeout_s
        engine = create_engine(self.db_url, pool_size=1)
        try:
            for reactor in bank.reactors:
                while True:
                    async with engine.connect() as conn:
                        count = (
                            await conn.execute(
                                select(func.count()).where(
                                    c.projection == reactor.name, c.topic.in_(sorted(topics))
                                )
                            )
                        ).scalar_one()
                    if count >= partitions:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"reactor {reactor.name} stored no start after {timeout_s:.0f}s")
                    await asyncio.sleep(0.2)
        finally:
            await engine.dispose()

    async def revive(self) -> list[str]:
        """Start again every broker node and service that is not running; returns their names."""
        nodes: list[str] = []
        if isinstance(self.broker, ApacheKafkaCluster):
            for n in self.broker.nodes:
                if not n.running:
                    await asyncio.to_thread(self.broker.restart, n.node_id)
                    nodes.append(f"kafka-{n.node_id}")
        dead = [s for s in self.services if not s.alive]
        for s in dead:
            s.start()
        await asyncio.gather(*(s.ready() for s in dead))
        return nodes + [s.name for s in dead]

    async def stop(self, *, keep_db: bool = False) -> dict[str, int | None]:
        """SIGTERM every service (their exit codes), stop the broker, drop the database."""
        codes = dict(
            zip(
                [s.name for s in self.services],
                await asyncio.gather(*(asyncio.to_thread(s.terminate) for s in self.services)),
                strict=True,
            )
        )
        await self.rss.stop()
        self.mail.stop()
        self.broker.stop()
        if self.db_url and not keep_db:
            await drop_database(PG_ADMIN_URL, self.db_url)
        return codes
