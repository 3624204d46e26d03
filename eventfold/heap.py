"""Giving the C heap's free memory back to the operating system (glibc's `malloc_trim`).

glibc hands freed memory back to the system on its own only from the top of
its heap. A service whose pool opens many TLS connections at once, as it does
after its database restarts or drops every connection, leaves OpenSSL's freed
buffers scattered through the heap: nothing is leaked, yet resident memory
rises by about half a megabyte with each such storm and never comes down
(twenty pooled connections terminated 40 times: 58 -> 81 MB; `malloc_trim(0)`
then gave back 16 MB). The services trim every `EVENTFOLD_HEAP_TRIM_INTERVAL_S`
seconds, in a worker thread so that the event loop never waits on it. Where
the C library has no `malloc_trim` (musl, macOS), there is nothing to do.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def can_trim() -> bool:
    return _MALLOC_TRIM is not None


def trim() -> bool:
    """Release the heap's free pages now; True if any were released."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))


async def trim_every(interval_s: float) -> None:
    """Trim every `interval_s` seconds until cancelled; returns at once if off (0) or unavailable."""
    if interval_s <= 0 or _MALLOC_TRIM is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
