"""Giving the C heap's free memory back: what `malloc_trim` releases, and when the services call it."""

from __future__ import annotations

import asyncio
import ctypes
import os

import pytest

from eventfold import heap
from eventfold.rss import rss_mb

pytestmark = pytest.mark.skipif(not heap.can_trim(), reason="the C library has no malloc_trim (not glibc)")


def test_trimming_gives_back_free_memory_that_glibc_keeps() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 4 KB blocks (under the mmap threshold: they come from the heap), freed
    # but for every 64th, so that no free run reaches the top of the heap.
    blocks = [libc.malloc(4096) for _ in range(40_000)]
    for b in blocks:
        ctypes.memset(b, 1, 4096)  # resident
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    kept = _rss()
    released = heap.trim()
    after = _rss()
    for i, b in enumerate(blocks):
        if not i % 64:
            libc.free(b)
    assert released
    assert kept - after > 100, (kept, after)  # of the ~156 MB freed


def _rss() -> float:
    mb = rss_mb(os.getpid())
    assert mb is not None
    return mb


async def test_trimming_runs_until_cancelled_and_not_at_all_when_off() -> None:
    await asyncio.wait_for(heap.trim_every(0), 1)  # off: returns at once
    trimming = asyncio.create_task(heap.trim_every(0.01))
    await asyncio.sleep(0)
    assert not trimming.done()
    trimming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trimming
