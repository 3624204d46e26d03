"""Services as real child processes, for tests that kill and restart them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import httpx

from eventfold.broker import free_port
from eventfold.settings import Settings
from tests.helpers import wait_until
from tests.support.processes import settings_env

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """`eventfold serve <service>` (or any module) in a child process."""

    # Every process started, so a failing test cannot leave one behind.
    live: ClassVar[list[ServiceProcess]] = []

    def __init__(
        self,
        settings: Settings,
        service: str,
        *,
        module: str | None = None,
        log: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = extra_env or {}
        self.settings = settings
        self.service = service
        self.module = module
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**settings_env(self.settings), **self.extra_env}
        if self.module:
            argv = [sys.executable, "-m", self.module, str(self.port)]
        else:
            argv = [sys.executable, "-m", "eventfold.cli", "serve", self.service, "--port", str(self.port)]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        ServiceProcess.live.append(self)

    async def ready(self, timeout: float = 30.0) -> None:
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.service} exited with {self.proc.returncode}")
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{self.url}/healthz", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up, timeout=timeout, what=f"{self.service} to answer /healthz")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        proc = self.proc

        async def exited() -> bool:
            return proc.poll() is not None

        await wait_until(exited, timeout=timeout, what=f"{self.service} to exit")
        return int(proc.returncode)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def started(settings: Settings, service: str, **kwargs: object) -> ServiceProcess:
    p = ServiceProcess(settings, service, **kwargs)  # type: ignore[arg-type]
    p.start()
    try:
        await p.ready()
    except BaseException:
        p.stop()
        raise
    return p


__all__ = ["ServiceProcess", "asyncio", "started"]
