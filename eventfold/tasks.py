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
