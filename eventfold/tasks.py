"""Stopping background tasks so that a stop always returns.

On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives as
the call it guards completes (fixed in 3.12), so a loop cancelled once may go
on to its next iteration and wait forever. `cancel_and_wait` cancels again
until every task has ended or the deadline passes, and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout_s: float = 10.0) -> int:
    """Cancel the tasks and wait for them to end; returns how many did not."""
    pending = {t for t in tasks if t is not None and not t.done()}
    deadline = time.monotonic() + timeout_s
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
    if pending:
        log.warning("%d task(s) did not stop: %s", len(pending), sorted(t.get_name() for t in pending))
    return len(pending)


async def run_until_stopped(work: Iterable[asyncio.Task[Any]], stop: asyncio.Event, grace_s: float) -> None:
    """Wait for `work` to end; once `stop` is set, give it `grace_s`, then cancel what is left.

    Each task ends by itself on `stop` at its next check (a batch in hand is
    finished first). One stuck in a call that does not return, such as
    joining a consumer group on a broker that never answers, would keep the
    process from stopping: it is cancelled, and its cleanup runs. An error of
    a task that ended by itself is raised, as from `asyncio.gather`.
    """
    tasks = list(work)
    everything: asyncio.Future[Any] = asyncio.gather(*tasks)
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({everything, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            await asyncio.wait({everything}, timeout=grace_s)
    except BaseException:
        everything.cancel()
        raise
    finally:
        stopping.cancel()
    if everything.done():
        everything.result()
        return
    stuck = sorted(t.get_name() for t in tasks if not t.done())
    log.warning("still running %.0f s after stop, cancelled: %s", grace_s, stuck)
    # A task cancelled here fails the gather with CancelledError; that is
    # this stop working, not an error, so the gather's outcome is dropped.
    everything.add_done_callback(lambda f: f.cancelled() or f.exception())
    await cancel_and_wait(tasks)
