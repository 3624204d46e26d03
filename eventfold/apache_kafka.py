"""A local Apache Kafka cluster: three KRaft nodes on loopback, from Maven Central.

`fetch_kafka` resolves `org.apache.kafka:kafka_2.13` and its runtime
dependencies with `mvn` into a cache (`EVENTFOLD_KAFKA_CACHE`, default
`~/.cache/eventfold/kafka`) that later runs reuse; no Kafka distribution is
downloaded. `ApacheKafkaCluster` formats KRaft storage and starts N combined
broker+controller JVMs with small heaps, each with a PLAINTEXT listener and a
SASL_PLAINTEXT listener that accepts PLAIN and SCRAM-SHA-512, so the tests,
the benchmark and the chaos suite exercise what production runs: replicated
topics, idempotent producers, real ListOffsets and authenticated clients.

Every JVM gets SIGKILL when the process that started it dies (Linux
parent-death signal), so a killed test run leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from eventfold.broker import BrokerUnavailable, die_with_parent, free_port, port_open

KAFKA_VERSION = os.environ.get("EVENTFOLD_KAFKA_VERSION", "4.1.2")
# Kafka's runtime logs through SLF4J; these bind it to a console appender.
_LOG4J = "2.24.3"
_SLF4J = "2.0.17"

SASL_USER = "eventfold"
SASL_PASSWORD = "eventfold-secret"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.eventfold</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c{1})%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/><Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/><Logger name="kafka.request.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    if env := os.environ.get("EVENTFOLD_KAFKA_CACHE"):
        return Path(env)
    return Path.home() / ".cache" / "eventfold" / "kafka"


def java_available() -> bool:
    return shutil.which("java") is not None


def fetch_kafka(version: str = KAFKA_VERSION) -> Path:
    """The folder of jars for `version`, resolved with `mvn` once and then reused."""
    libs = cache_dir() / version / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerUnavailable("Apache Kafka needs Maven (`mvn`) to fetch its jars; install maven")
    work = cache_dir() / version
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J, slf4j=_SLF4J))
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=work))
    cmd = [
        "mvn", "-B", "-q", "-f", str(work / "pom.xml"),
        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerUnavailable(f"mvn could not fetch Apache Kafka {version}: " + " | ".join(tail))
    # Kafka 4 wants SLF4J 2; a transitive 1.7 jar would shadow the binding.
    for old in staging.glob("slf4j-api-1.*.jar"):
        old.unlink()
    (staging / "log4j2.xml").write_text(_LOG_CONFIG)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.touch()
    return libs


_FORMAT_ATTEMPTS = 3


@dataclass
class KafkaNode:
    node_id: int
    port: int  # PLAINTEXT, for clients
    sasl_port: int  # SASL_PLAINTEXT: PLAIN and SCRAM-SHA-512
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ApacheKafkaCluster:
    """N combined broker+controller KRaft nodes on free loopback ports."""

    kind = "apache"
    # What this broker can do, for the settings built around it.
    idempotence = True
    highwater_from_fetch = False
    fetch_max_wait_ms = 50

    def __init__(
        self,
        nodes: int = 3,
        directory: Path | None = None,
        heap_mb: int = 320,
        version: str = KAFKA_VERSION,
        first_port: int | None = None,
    ) -> None:
        self.version = version
        self.heap_mb = heap_mb
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="eventfold-kafka-"))
        self.cluster_id = _cluster_id()
        self.nodes = [
            KafkaNode(
                i + 1,
                first_port if i == 0 and first_port else free_port(),
                free_port(),
                free_port(),
                self.directory / f"node-{i + 1}",
            )
            for i in range(nodes)
        ]
        self._libs: Path | None = None
        self._formatted = False

    # ---- addresses -------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    # ---- lifecycle -------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> None:
        self._libs = fetch_kafka(self.version)
        if not self._formatted:
            for n in self.nodes:
                self._format(n)
            self._formatted = True
        for n in self.nodes:
            self._spawn(n)
        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            self._wait_listening(n, deadline, timeout_s)

    async def astart(self, timeout_s: float = 90.0) -> None:
        # Formatting and fetching run JVMs and mvn to completion: off the loop.
        # The brokers themselves are spawned from this thread (see broker.py).
        self._libs = await asyncio.to_thread(fetch_kafka, self.version)
        if not self._formatted:
            await asyncio.gather(*(asyncio.to_thread(self._format, n) for n in self.nodes))
            self._formatted = True
        for n in self.nodes:
            self._spawn(n)
        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            while not port_open(n.port):
                self._check(n, deadline, timeout_s)
                await asyncio.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every node at once, SIGKILL what is left after `timeout_s`.

        Nodes stopped one by one would each wait for a controlled shutdown the
        shrinking quorum can no longer grant.
        """
        procs = [n.process for n in self.nodes if n.process is not None and n.process.poll() is None]
        for n in self.nodes:
            n.process = None
        for proc in procs:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ApacheKafkaCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---- faults (tests and the chaos suite) ------------------------------
    def pause(self, node_id: int | None = None) -> None:
        """SIGSTOP one node, or all: connections hang as in a network outage."""
        for n in self._select(node_id):
            if n.running:
                assert n.process is not None
                n.process.send_signal(signal.SIGSTOP)

    def resume(self, node_id: int | None = None) -> None:
        for n in self._select(node_id):
            if n.running:
                assert n.process is not None
                n.process.send_signal(signal.SIGCONT)

    def kill(self, node_id: int, *, graceful: bool = False) -> None:
        """SIGKILL a node (or SIGTERM and wait, with `graceful`); its data stays."""
        n = self.node(node_id)
        proc, n.process = n.process, None
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            if graceful:
                proc.terminate()
            else:
                proc.kill()
        try:
            proc.wait(timeout=30 if graceful else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, node_id: int, timeout_s: float = 60.0) -> None:
        """Start a killed node again on its old ports and data."""
        n = self.node(node_id)
        if n.running:
            return
        self._spawn(n)
        self._wait_listening(n, time.monotonic() + timeout_s, timeout_s)

    def pids(self) -> dict[int, int]:
        return {n.node_id: n.process.pid for n in self.nodes if n.process is not None and n.running}

    def _select(self, node_id: int | None) -> list[KafkaNode]:
        return self.nodes if node_id is None else [self.node(node_id)]

    # ---- internals -------------------------------------------------------
    def _java(self, main: str, *args: str, heap_mb: int | None = None) -> list[str]:
        assert self._libs is not None
        return [
            "java", f"-Xmx{heap_mb or self.heap_mb}m", f"-Xms{min(heap_mb or self.heap_mb, 128)}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._libs / 'log4j2.xml'}",
            "-cp", f"{self._libs}/*", main, *args,
        ]  # fmt: skip

    def _properties(self, n: KafkaNode) -> Path:
        voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes)
        rf = min(3, len(self.nodes))
        isr = min(2, rf)
        jaas_plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{SASL_USER}" password="{SASL_PASSWORD}" user_{SASL_USER}="{SASL_PASSWORD}";'
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": n.node_id,
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{n.port},SASL_PLAINTEXT://127.0.0.1:{n.sasl_port},"
                f"CONTROLLER://127.0.0.1:{n.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.port},SASL_PLAINTEXT://127.0.0.1:{n.sasl_port}",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas_plain,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "log.dirs": n.directory / "data",
            "num.partitions": 4,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": 0,
            # Tests and the chaos suite run consumers with short sessions so a
            # killed member's partitions move on within seconds.
            "group.min.session.timeout.ms": 1000,
            "auto.create.topics.enable": "false",
            # Small machines: few threads, small buffers, quick failure detection.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.segment.bytes": 64 * 1024 * 1024,
            "replica.lag.time.max.ms": 10_000,
            "broker.session.timeout.ms": 6_000,
            "broker.heartbeat.interval.ms": 1_000,
            "controller.quorum.election.timeout.ms": 1_000,
            "controller.quorum.fetch.timeout.ms": 2_000,
            "unclean.leader.election.enable": "false",
        }
        n.directory.mkdir(parents=True, exist_ok=True)
        path = n.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _format(self, n: KafkaNode) -> None:
        props = self._properties(n)
        scram = f"SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"
        cmd = self._java(
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            f"--cluster-id={self.cluster_id}", "--config", str(props), "--add-scram", scram,
            heap_mb=256,
        )  # fmt: skip
        # The tool is a JVM of its own; one that fails to start (seen once on a
        # busy machine) is tried again: with --ignore-formatted a rerun is harmless.
        for _ in range(_FORMAT_ATTEMPTS):
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return
        # The tool logs INFO lines first; its error is at the end.
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        code = result.returncode
        raise BrokerUnavailable(
            f"kafka storage format failed {_FORMAT_ATTEMPTS} times (exit {code}): {' | '.join(tail)}"
        )

    def _spawn(self, n: KafkaNode) -> None:
        if port_open(n.port):
            raise BrokerUnavailable(f"port {n.port} is already in use")
        log = open(n.directory / "server.log", "ab")  # noqa: SIM115
        try:
            n.process = subprocess.Popen(
                self._java("kafka.Kafka", str(n.directory / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def _check(self, n: KafkaNode, deadline: float, timeout_s: float) -> None:
        if n.process is None or n.process.poll() is not None:
            code = None if n.process is None else n.process.returncode
            log = n.directory / "server.log"
            raise BrokerUnavailable(f"kafka node {n.node_id} exited ({code}); see {log}")
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"kafka node {n.node_id} did not listen on {n.port} in {timeout_s}s")

    def _wait_listening(self, n: KafkaNode, deadline: float, timeout_s: float) -> None:
        while not port_open(n.port):
            self._check(n, deadline, timeout_s)
            time.sleep(0.05)


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
