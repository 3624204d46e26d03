"""One service as several processes: members of one consumer group.

Kafka spreads a topic's partitions over the members of a group, so N
projector processes apply N shares of the partitions side by side, each in
its own interpreter (one Python process applies on one core). This module
starts them, passes the stop signal on, and stops them all when one of them
exits, so an orchestrator sees one service that either runs or exits
non-zero (and restarts it whole).

Each member holds the read end of a pipe whose write end only this process
has: when this process dies, even by SIGKILL, the kernel closes it and the
members see end-of-file and stop, so none outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("eventfold.members")

# The hidden option a member gets: the pipe it watches for its parent's end.
PARENT_FD_OPTION = "--parent-fd"


async def run_members(
    args: Sequence[str],
    count: int,
    env: Callable[[int], Mapping[str, str]],
    stop: asyncio.Event,
    grace_s: float,
) -> int:
    """Run `count` processes of `eventfold <args>` until `stop` or one exits; their exit code.

    `env(n)` is the environment of member n (0, 1, ...).
    """
    read_end, write_end = os.pipe()
    members: list[asyncio.subprocess.Process] = []
    first: asyncio.subprocess.Process | None = None
    try:
        for n in range(count):
            members.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "eventfold.cli",
                    *args,
                    PARENT_FD_OPTION,
                    str(read_end),
                    env=dict(env(n)),
                    pass_fds=(read_end,),
                )
            )
        os.close(read_end)
        read_end = -1
        log.info("started %d members: pids %s", count, " ".join(str(m.pid) for m in members))
        exits = {asyncio.ensure_future(m.wait()): m for m in members}
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([*exits, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        # Ctrl-C in a terminal signals the members too: one may be gone first.
        if not stop.is_set():
            first = next((exits[t] for t in done if t in exits), None)
        if first is not None:
            log.error("member pid %d exited with %s: stopping the others", first.pid, first.returncode)
        await _stop_all(members, grace_s)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        for m in members:
            if m.returncode is None:  # cancelled midway: nothing is left running
                with contextlib.suppress(ProcessLookupError):
                    m.kill()
    if first is not None:
        # A member that stopped on its own failed the service, even with 0.
        return _exit_code(first.returncode) or 1
    return next((_exit_code(m.returncode) for m in members if m.returncode), 0)


def _exit_code(returncode: int | None) -> int:
    """A member's exit as a shell reports it: killed by signal N is 128 + N."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


async def _stop_all(members: Sequence[asyncio.subprocess.Process], grace_s: float) -> None:
    """SIGTERM to each member still running; SIGKILL to any still there after the grace."""
    for m in members:
        if m.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                m.send_signal(signal.SIGTERM)
    # The members' own grace, plus time to close their connections.
    waiting = asyncio.gather(*(m.wait() for m in members))
    try:
        await asyncio.wait_for(asyncio.shield(waiting), grace_s + 10.0)
    except TimeoutError:
        for m in members:
            if m.returncode is None:
                log.error("member pid %d did not stop in %.0fs: killed", m.pid, grace_s + 10.0)
                with contextlib.suppress(ProcessLookupError):
                    m.kill()
        await waiting


def watch_parent(fd: int, stop: asyncio.Event) -> None:
    """Set `stop` when the pipe `fd` from the parent ends (the parent is gone)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def ended() -> None:
        loop.remove_reader(fd)
        log.warning("the parent process is gone: stopping")
        stop.set()

    loop.add_reader(fd, ended)
