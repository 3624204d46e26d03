"""Services as subprocesses (`python -m eventfold.cli ...`), configured by EVENTFOLD_* env."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from eventfold.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The settings as EVENTFOLD_* variables, plus `extra` (name=value, prefixed).

    A projector runs as one process unless the test asks for more, so that a
    signal the test sends reaches the process that applies the events.
    """
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", "EVENTFOLD_PROJECTOR_PROCESSES": "1"}
    env.update({f"EVENTFOLD_{name.upper()}": str(v) for name, v in extra.items()})
    return env


def start(
    args: list[str], env: dict[str, str], log: Path, *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """`eventfold <args>`; `new_session`: in a process group of its own, as a shell's job."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "eventfold.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, then the exit code (the projector finishes its batch first)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def kill_pid(pid: int) -> None:
    """SIGKILL a process this test did not start itself (a service's member)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
