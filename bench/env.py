"""What the benchmark runs on: its own broker, databases and child processes.

Everything is started by the harness and torn down by it, whatever fails:
the broker on free loopback ports (a 3-node Apache Kafka cluster, or the
embedded Tansu), PostgreSQL databases created (and dropped) on the server at
`EVENTFOLD_BENCH_PG_URL` (default the local one), and service processes
(`eventfold serve ...`) whose environment points at both. What differs between
brokers is configuration only, taken from the broker's capability flags: the
measured code never asks which broker it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from eventfold.apache_kafka import ApacheKafkaCluster, java_available
from eventfold.broker import EmbeddedBroker, broker_kafka_settings, free_port, settings_env, tansu_path
from eventfold.rss import RssSampler
from eventfold.settings import DatabaseSettings, KafkaSettings, Settings

PG_ADMIN = os.environ.get("EVENTFOLD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("apache", "tansu")
APACHE_NODES = 3

LocalBroker = ApacheKafkaCluster | EmbeddedBroker


def default_broker() -> str:
    """`EVENTFOLD_BENCH_BROKER` (apache|tansu); Apache Kafka where Java is present, else Tansu."""
    kind = os.environ.get("EVENTFOLD_BENCH_BROKER") or ("apache" if java_available() else "tansu")
    if kind not in BROKERS:
        raise ValueError(f"EVENTFOLD_BENCH_BROKER must be apache or tansu, not {kind!r}")
    return kind


def new_broker(kind: str, workdir: Path) -> LocalBroker:
    if kind == "apache":
        return ApacheKafkaCluster(nodes=APACHE_NODES, directory=workdir / "kafka")
    return EmbeddedBroker(log_path=workdir / "broker.log")


def broker_info(broker: LocalBroker) -> dict[str, object]:
    """Which broker ran, for the report: kind, version, nodes and what it can do."""
    version: str | None
    if isinstance(broker, ApacheKafkaCluster):
        name, version, nodes = "Apache Kafka", broker.version, len(broker.nodes)
    else:
        name, version, nodes = "Tansu (embedded)", _tansu_version(), 1
    return {
        "kind": broker.kind,
        "name": name,
        "version": version,
        "nodes": nodes,
        "bootstrap": broker.bootstrap,
        "idempotence": broker.idempotence,
        "highwater_from_fetch": broker.highwater_from_fetch,
        "fetch_max_wait_ms": broker.fetch_max_wait_ms,
    }


def stop_broker(broker: LocalBroker) -> None:
    """Stop the broker and drop its data, keeping its logs in the work directory.

    The nodes of an Apache cluster are killed, not shut down in turn: the data
    is thrown away, and the last node of a KRaft quorum would wait out its
    controlled-shutdown timeout (30 s) for controllers that are already gone.
    """
    if isinstance(broker, ApacheKafkaCluster):
        for n in broker.nodes:
            broker.kill(n.node_id)
        for n in broker.nodes:
            shutil.rmtree(n.directory / "data", ignore_errors=True)
    broker.stop()


def _tansu_version() -> str | None:
    """`tansu --version` prints `tansu 0.6.0`."""
    try:
        out = subprocess.run(
            [str(tansu_path()), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired, RuntimeError):
        return None
    return out.split()[-1] if out.split() else None


def _dsn(url: str, database: str | None = None) -> str:
    """A libpq/asyncpg URL (no `+asyncpg`), optionally for another database."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


@dataclass
class Child:
    """A service process of the benchmark, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        """The largest peak of one process: the child, or one of its own (a service's members)."""
        peaks = [p for p in map(peak_rss_mb, process_tree(self.pid)) if p is not None]
        return max(peaks, default=None)

    def log_tail(self, lines: int = 25, chars: int = 3000) -> str:
        """The end of the child's log; long lines (SQL parameters) are cut."""
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(line[:300] for line in tail)[-chars:]

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """VmHWM (peak resident set) of a live process, in MB; `field="VmRSS"` for the current one."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time a live process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and I/O wait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is counted in user already
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_by_program() -> dict[int, tuple[str, float]]:
    """Program name (`postgres`, `java`...) and CPU seconds so far of every live process, by pid.

    A process's own time plus that of the children it reaped, so a worker or a
    backend that exited between two samples still counts, in its parent's.
    """
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if len(fields) > 14:
            # Kernel workers rename themselves by the queue they serve: one name for all.
            name = head.partition("(")[2].split("/")[0]
            out[int(entry)] = (name, sum(int(v) for v in fields[11:15]) / tick)
    return out


def cpu_delta_us(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], events: int
) -> dict[str, float]:
    """µs per event or request, by program, between two `cpu_by_program` samples (over 0.5 µs)."""
    per: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        was = before.get(pid)
        per[name] = per.get(name, 0.0) + (seconds - (was[1] if was else 0.0)) * 1e6 / events
    return {k: round(v, 1) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.5}


async def machine_quiet(max_s: float = 120.0, window_s: float = 3.0, quiet_cores: float = 0.5) -> list[float]:
    """Wait until the machine's busy cores over a window fall to `quiet_cores` (or `max_s` passes).

    Returns the busy cores of each window: what was still running in the
    background when a latency measurement began.
    """
    windows: list[float] = []
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        busy, t0 = machine_busy_seconds(), time.monotonic()
        await asyncio.sleep(window_s)
        windows.append(round((machine_busy_seconds() - busy) / (time.monotonic() - t0), 2))
        if windows[-1] <= quiet_cores:
            break
    return windows


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a parallel replay's worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


class BenchEnv:
    """The broker, the databases and the child processes of one benchmark run."""

    def __init__(self, partitions: int = 4, broker: str = "tansu") -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker must be one of {BROKERS}, not {broker!r}")
        self.partitions = partitions
        self.tag = f"bench_{uuid.uuid4().hex[:8]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="eventfold-bench-"))
        self.broker = new_broker(broker, self.workdir)
        self.databases: list[str] = []
        self.children: list[Child] = []
        self.api_keys, self.auth_headers = _api_key()
        # Every child's RSS over the run; phases declare their steady windows on it.
        self.rss = RssSampler(interval_s=0.5)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self.rss.start()
        await self.broker.astart()
        # The broker shares the machine's memory with the services: shown, not judged.
        if isinstance(self.broker, ApacheKafkaCluster):
            for node_id, pid in self.broker.pids().items():
                self.rss.watch(f"kafka-node-{node_id}", pid)
        else:
            for pid in self.broker_pids():
                self.rss.watch("tansu", pid)

    def broker_pids(self) -> list[int]:
        """The broker's processes: the Apache Kafka nodes, or the embedded broker."""
        if isinstance(self.broker, ApacheKafkaCluster):
            return list(self.broker.pids().values())
        return [self.broker.process.pid] if self.broker.process is not None else []

    async def broker_info(self) -> dict[str, object]:
        return await asyncio.to_thread(broker_info, self.broker)

    async def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.stop)
        self.children.clear()
        await self.rss.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(stop_broker, self.broker)
        for name in self.databases:
            with contextlib.suppress(Exception):
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()

    def log_errors(self) -> dict[str, int]:
        """Error-level lines in each child's log: internal errors a service survived."""
        out = {}
        for log in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                out[log.name] = log.read_text(errors="replace").count('"level": "error"')
        return out

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(_dsn(PG_ADMIN), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # -- databases ---------------------------------------------------------

    async def create_database(self, suffix: str, *, migrate: Sequence[str] = ()) -> str:
        """A new database (dropped at close); returns its plain postgresql:// URL."""
        from eventfold.migrate import upgrade

        name = f"{self.tag}_{suffix}"
        await self._admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        url = _dsn(PG_ADMIN, name)
        for target in migrate:
            await upgrade(url, target)  # type: ignore[arg-type]
        return url

    async def settle_database(self) -> float:
        """Vacuum and analyse every bench database, then checkpoint; returns the seconds it took.

        An earlier phase's bulk writes (a million-event replay) leave dead rows
        and dirty pages that autovacuum and the checkpointer would otherwise
        work off in the middle of a later latency measurement.
        """
        t0 = time.monotonic()
        for name in list(self.databases):
            conn = await self.connect(_dsn(PG_ADMIN, name))
            try:
                await conn.execute("VACUUM (ANALYZE)")
            finally:
                await conn.close()
        await self._admin("CHECKPOINT")
        return time.monotonic() - t0

    async def connect(self, url: str) -> asyncpg.Connection:
        return await asyncpg.connect(_dsn(url), timeout=10)

    async def truncate_all(self, url: str) -> None:
        """Empty every table but Alembic's: a read store back to its start."""
        conn = await self.connect(url)
        try:
            names = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
            if names:
                tables = ", ".join(f'"{r["tablename"]}"' for r in names)
                await conn.execute(f"TRUNCATE {tables}")
        finally:
            await conn.close()

    # -- settings and child processes --------------------------------------

    def kafka(self, prefix: str) -> KafkaSettings:
        return KafkaSettings(
            **broker_kafka_settings(self.broker),
            topic_prefix=prefix,
            partitions=self.partitions,
        )

    def settings(self, prefix: str, write_url: str, read_url: str) -> Settings:
        return Settings(
            kafka=self.kafka(prefix),
            db=DatabaseSettings(write_db_url=write_url, read_db_url=read_url),
        )

    def service_env(self, prefix: str, write_url: str, read_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
        env.update(
            {
                **settings_env(broker_kafka_settings(self.broker)),
                "EVENTFOLD_TOPIC_PREFIX": prefix,
                "EVENTFOLD_PARTITIONS": str(self.partitions),
                "EVENTFOLD_WRITE_DB_URL": write_url,
                "EVENTFOLD_READ_DB_URL": read_url,
                "EVENTFOLD_DATA_DIR": str(self.workdir / "data"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.api_keys is not None:
            env["EVENTFOLD_API_KEYS"] = self.api_keys
        env.update(extra)
        return env

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log = self.workdir / f"{name}-{len(self.children)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        self.rss.watch(name, proc.pid)
        return child

    def eventfold(self, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        """`eventfold <args>` in a child process, through this interpreter."""
        return self.spawn(name, [sys.executable, "-m", "eventfold.cli", *args], env)

    async def stop_child(self, child: Child) -> int | None:
        code = await asyncio.to_thread(child.stop)
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        return code

    async def wait_http(self, child: Child, port: int, path: str, timeout_s: float = 30.0) -> None:
        """Wait until `GET path` answers 200, or fail with the child's log."""
        from bench.load import Client, build_request

        deadline = time.monotonic() + timeout_s
        raw = build_request("GET", path, port)
        last = "no answer"
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
            client = Client(port)
            try:
                status, body = await client.request(raw, timeout_s=2.0)
                if status == 200:
                    return
                last = f"{status} {body[:200]!r}"
            except (OSError, TimeoutError) as exc:
                last = repr(exc)
            finally:
                client.close()
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{child.name} not ready on :{port}{path} in {timeout_s}s ({last}):\n{child.log_tail()}"
        )


def _api_key() -> tuple[str | None, dict[str, str]]:
    """An admin key for the services, and the header that presents it.

    Clients pay for authentication too, so the benchmark authenticates as a
    client would. Before the services had keys, there is nothing to do.
    """
    try:
        from eventfold.auth import new_key
    except ImportError:
        return None, {}
    import orjson

    token, entry = new_key("bench", ["admin"])
    return orjson.dumps([entry.model_dump(mode="json")]).decode(), {"Authorization": f"Bearer {token}"}


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
