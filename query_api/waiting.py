"""Read-your-writes: wait until a projection has applied a given Kafka offset.

A waiting request never queries the database itself: it parks a future under
(projection, topic, partition) and its offset, and one reader task per watcher
reads the stored offsets of every projection waited on in a single query, then
releases each waiter the stored next offset has passed.

On PostgreSQL the projector NOTIFYs `eventfold_offsets` in each batch's
transaction (delivered at commit, never for a rollback), and the reader LISTENs
on a connection of its own: it reads when told, and every `fallback_s` in case
a notification went missing. A read that began while listening leaves that
projection's offsets current until the next notification, so a new waiter on
it costs no query at all. Without a listener (SQLite, or the listen connection
lost and reconnecting) the reader polls every `poll_s` while anyone waits. It
lingers `idle_s` after the last waiter, so bursts of requests do not open a
listen connection each, then stops; the next wait starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from projector.store import OFFSETS_CHANNEL
from projector.tables import projection_offsets
from query_api.listen import listen_forever
from query_api.listen import wait_event as _wait

Key = tuple[str, str, int]  # projection, topic, partition
_Waiter = tuple[int, int, asyncio.Future[None]]  # offset, arrival order, future

log = structlog.get_logger("eventfold.query")


class _Run:
    """One run of the reader: its wake-up call and what its listen connection keeps current.

    Per run, so a stopping run's connection cannot touch the state of the next.
    """

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.listening = False
        self.losses = 0  # listen connections lost so far
        self.current: set[str] = set()
        self.stale: set[str] = set()  # notified while nobody waited on them, since the last read
        self.pid: int | None = None


class OffsetWatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_s: float = 0.005,
        fallback_s: float = 0.1,
        idle_s: float = 2.0,
        application_name: str = "eventfold-offset-watcher",
    ) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.fallback_s = fallback_s
        self.idle_s = idle_s
        self.application_name = application_name
        self._listens = engine.dialect.name == "postgresql"
        self._waiters: dict[Key, list[_Waiter]] = {}  # a heap per key, lowest offset first
        self._order = itertools.count()
        self._offsets: dict[Key, int] = {}  # as of the last read; only while a run waits
        self._run: _Run | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def listen_pid(self) -> int | None:
        """The backend pid of the listen connection, if one is up."""
        return self._run.pid if self._run is not None else None

    @property
    def running(self) -> bool:
        """A reader task is up (it stops `idle_s` after the last waiter)."""
        return bool(self._tasks)

    @property
    def waiting(self) -> int:
        """How many waiters are parked."""
        return sum(len(heap) for heap in self._waiters.values())

    async def wait(self, key: Key, offset: int, timeout_s: float) -> bool:
        """True once the stored next offset is past `offset`; False after the timeout."""
        if self._closed:
            raise RuntimeError("the offset watcher is closed")
        if self._offsets.get(key, -1) > offset:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry: _Waiter = (offset, next(self._order), fut)
        heapq.heappush(self._waiters.setdefault(key, []), entry)
        run = self._start()
        if key[0] not in run.current:
            run.wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            if fut.cancelled() or not fut.done():
                self._forget(key, entry)

    async def close(self) -> None:
        """Stop the reader and close its listen connection."""
        self._closed = True
        self._run = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, key: Key, entry: _Waiter) -> None:
        """Drop a waiter that timed out or was cancelled (rare, so a linear removal)."""
        heap = self._waiters.get(key)
        if heap is None or entry not in heap:
            return
        heap.remove(entry)
        if heap:
            heapq.heapify(heap)
        else:
            del self._waiters[key]

    def _start(self) -> _Run:
        if self._run is None:
            self._run = run = _Run()
            task = asyncio.create_task(self._read_loop(run), name="offset-watcher")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._run

    async def _read_loop(self, run: _Run) -> None:
        keeper = asyncio.create_task(self._listen(run), name="offset-listener") if self._listens else None
        failures = 0
        try:
            while True:
                if not self._waiters:
                    self._offsets.clear()
                    run.current.clear()
                    if not await self._linger(run):
                        # Decided with no await since the check: the next wait() starts a new run.
                        self._run = None
                        return
                await _wait(run.wake, self.fallback_s if run.listening else self.poll_s)
                run.wake.clear()  # a wake-up during the read asks for another one
                projections = sorted({k[0] for k in self._waiters})
                if not projections:
                    continue
                listened, losses = run.listening, run.losses
                run.stale.clear()
                try:
                    self._offsets = await self._read(projections)
                except Exception as exc:
                    failures += 1
                    retry_in = min(self.poll_s * 2**failures, 1.0)
                    log.warning("offset_read_failed", error=repr(exc), retry_in=retry_in)
                    run.current.clear()
                    await asyncio.sleep(retry_in)
                    continue
                failures = 0
                # Only a read that began after LISTEN can vouch for everything up to it.
                if listened and run.losses == losses:
                    run.current = set(projections) - run.stale
                else:
                    run.current.clear()
                self._release()
        finally:
            if self._run is run:
                self._run = None
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(BaseException):
                    await keeper

    async def _linger(self, run: _Run) -> bool:
        """Wait up to `idle_s` for a waiter; False if none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_s
        while not self._waiters:
            left = deadline - loop.time()
            if left <= 0:
                return False
            run.wake.clear()
            await _wait(run.wake, left)
        return True

    async def _read(self, projections: list[str]) -> dict[Key, int]:
        c = projection_offsets.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(c.projection, c.topic, c.partition, c.next_offset).where(c.projection.in_(projections))
            )
            return {(p, t, int(n)): int(o) for p, t, n, o in rows.all()}

    def _release(self) -> None:
        for key in list(self._waiters):
            heap = self._waiters[key]
            stored = self._offsets.get(key, -1)
            while heap and heap[0][0] < stored:
                fut = heapq.heappop(heap)[2]
                if not fut.done():
                    fut.set_result(None)
            if not heap:
                del self._waiters[key]

    async def _listen(self, run: _Run) -> None:
        """Keep a LISTEN connection open for this run, reconnecting with backoff."""

        def notified(payload: str) -> None:
            if any(k[0] == payload for k in self._waiters):
                run.wake.set()
            else:  # no read for it now, so what we hold of it is no longer current
                run.current.discard(payload)
                run.stale.add(payload)

        def up(pid: int) -> None:
            run.listening, run.pid = True, pid
            run.wake.set()  # what committed before LISTEN only a read can see

        def down() -> None:
            run.listening, run.pid = False, None
            run.losses += 1
            run.current.clear()
            run.wake.set()  # notifications may have been missed: read now

        await listen_forever(
            self.engine,
            OFFSETS_CHANNEL,
            application_name=self.application_name,
            notified=notified,
            up=up,
            down=down,
            what="offset",
        )
