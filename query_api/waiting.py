"""Read-your-writes: wait until a projection has applied a given Kafka offset.

Many requests may wait on the same partition at once; they share one read of
its stored offset at a time (single flight) and a short-lived cached value,
so the database sees at most one small query per partition per interval.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from projector.tables import projection_offsets

Key = tuple[str, str, int]  # projection, topic, partition


class OffsetWatcher:
    def __init__(self, engine: AsyncEngine, interval_s: float = 0.005) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._cache: dict[Key, tuple[int, float]] = {}
        self._inflight: dict[Key, asyncio.Future[int]] = {}

    async def wait(self, key: Key, offset: int, timeout_s: float) -> bool:
        """True once the stored next offset is past `offset`; False after the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if await self.stored(key) > offset:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.interval_s, left))

    async def stored(self, key: Key) -> int:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[1] < self.interval_s:
            return hit[0]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._read(key))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _: self._inflight.pop(key, None))
        value = await asyncio.shield(fut)
        self._cache[key] = (value, time.monotonic())
        return value

    async def _read(self, key: Key) -> int:
        c = projection_offsets.c
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(c.next_offset).where(c.projection == key[0], c.topic == key[1], c.partition == key[2])
            )
            value = found.scalar_one_or_none()
        return -1 if value is None else int(value)
