"""The offset watcher behind `wait_for`, against real PostgreSQL and SQLite.

Offsets advance through the projector's own path (`save_offsets` and
`notify_offsets` in one transaction) on a connection of their own, as the
projector process would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.db import create_engine, is_sqlite
from eventfold.settings import DatabaseSettings
from projector import store
from query_api.waiting import OffsetWatcher
from tests.helpers import uid, wait_until

TOPIC = "t.account"


@pytest.fixture
async def engines(db: DatabaseSettings) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """A writing engine (the projector's side) and a reading one (the query API's)."""
    writer = create_engine(db.read_db_url, pool_size=2)
    reader = create_engine(db.read_db_url, pool_size=2, writer=False)
    try:
        yield writer, reader
    finally:
        await reader.dispose()
        await writer.dispose()


@pytest.fixture
async def watchers(engines: tuple[AsyncEngine, AsyncEngine]) -> AsyncIterator[Any]:
    """`watchers(**options)` builds watchers on the reading engine; all closed at the end."""
    made: list[OffsetWatcher] = []

    def build(**options: Any) -> OffsetWatcher:
        options.setdefault("application_name", uid("watcher"))
        w = OffsetWatcher(engines[1], **options)
        made.append(w)
        return w

    try:
        yield build
    finally:
        for w in made:
            await w.close()


async def advance(
    engine: AsyncEngine, projection: str, offsets: Mapping[tuple[str, int], int], *, commit: bool = True
) -> None:
    """Store next offsets as a projector batch does; roll back instead when asked."""
    async with engine.connect() as conn:
        tx = await conn.begin()
        await store.save_offsets(conn, projection, offsets)
        await store.notify_offsets(conn, projection)
        if commit:
            await tx.commit()
        else:
            await tx.rollback()


async def parked(watcher: OffsetWatcher, n: int) -> None:
    async def check() -> bool:
        return watcher.waiting == n

    await wait_until(check, timeout=5, interval=0.001, what=f"{n} parked waiters")


def on_postgres(engine: AsyncEngine) -> bool:
    return not is_sqlite(engine.url.render_as_string(hide_password=False))


async def test_a_committed_batch_wakes_a_waiter_promptly(engines, watchers) -> None:
    writer, reader = engines
    # On PostgreSQL no polling at all: only a read on LISTEN or on a notification can answer.
    quiet = {"poll_s": 60.0, "fallback_s": 60.0} if on_postgres(reader) else {}
    watcher = watchers(**quiet)
    proj = uid("p")
    await advance(writer, proj, {(TOPIC, 0): 3})
    assert await watcher.wait((proj, TOPIC, 0), 2, timeout_s=60)  # already applied
    waiter = asyncio.create_task(watcher.wait((proj, TOPIC, 0), 7, timeout_s=60))
    await parked(watcher, 1)
    await advance(writer, proj, {(TOPIC, 0): 8})
    async with asyncio.timeout(3):
        assert await waiter


async def test_an_offset_that_never_arrives_times_out(engines, watchers) -> None:
    writer, _ = engines
    watcher = watchers(idle_s=0)
    proj = uid("p")
    await advance(writer, proj, {(TOPIC, 0): 5})
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await watcher.wait((proj, TOPIC, 0), 5, timeout_s=0.3)
    assert 0.3 <= loop.time() - started < 2.3
    assert not await watcher.wait((proj, TOPIC, 1), 0, timeout_s=0.1)  # no row at all
    assert watcher.waiting == 0

    async def stopped() -> bool:
        return not watcher.running

    await wait_until(stopped, timeout=5, interval=0.01, what="the reader to stop")


async def test_many_waiters_on_several_partitions_are_all_released(engines, watchers) -> None:
    writer, _ = engines
    watcher = watchers()
    projections = [uid("p"), uid("q")]
    keys = [(p, TOPIC, n) for p in projections for n in range(4)]
    tasks: dict[tuple[tuple[str, str, int], int], list[asyncio.Task[bool]]] = {}
    for key in keys:
        for offset in range(10):
            tasks[key, offset] = [
                asyncio.create_task(watcher.wait(key, offset, timeout_s=30)) for _ in range(5)
            ]
    await parked(watcher, len(keys) * 10 * 5)

    # Half way: exactly the waiters below offset 5 go.
    for p in projections:
        await advance(writer, p, {(TOPIC, n): 5 for n in range(4)})
    first = [t for (_, offset), ts in tasks.items() if offset < 5 for t in ts]
    async with asyncio.timeout(5):
        assert all(await asyncio.gather(*first))
    assert not any(t.done() for (_, offset), ts in tasks.items() if offset >= 5 for t in ts)
    assert watcher.waiting == len(keys) * 5 * 5

    for p in projections:
        await advance(writer, p, {(TOPIC, n): 10 for n in range(4)})
    async with asyncio.timeout(5):
        assert all(await asyncio.gather(*(t for ts in tasks.values() for t in ts)))
    assert watcher.waiting == 0


async def test_a_rolled_back_batch_releases_no_waiter(engines, watchers) -> None:
    writer, _ = engines
    watcher = watchers()
    proj = uid("p")
    key = (proj, TOPIC, 0)
    waiter = asyncio.create_task(watcher.wait(key, 0, timeout_s=0.5))
    await parked(watcher, 1)
    await advance(writer, proj, {(TOPIC, 0): 100}, commit=False)
    assert not await waiter
    # The same batch committed does release one.
    waiter = asyncio.create_task(watcher.wait(key, 0, timeout_s=30))
    await parked(watcher, 1)
    await advance(writer, proj, {(TOPIC, 0): 1})
    async with asyncio.timeout(3):
        assert await waiter


async def _admin(reader: AsyncEngine) -> Any:
    return await asyncpg.connect(make_url(reader.url).set(drivername="postgresql").render_as_string(False))


async def _listeners(admin: Any, application_name: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", application_name
    )
    return [r["pid"] for r in rows]


@pytest.fixture
async def pg_engines(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """As `engines`, on PostgreSQL only: SQLite has no listen connection to kill."""
    writer = create_engine(pg_url, pool_size=2)
    reader = create_engine(pg_url, pool_size=2, writer=False)
    try:
        yield writer, reader
    finally:
        await reader.dispose()
        await writer.dispose()


async def test_a_killed_listen_connection_loses_no_waiter(pg_engines) -> None:
    writer, reader = pg_engines
    name = uid("watcher")
    watcher = OffsetWatcher(reader, application_name=name, fallback_s=60.0)
    try:
        await _kill_listener_and_wait(watcher, writer, reader, name)
    finally:
        await watcher.close()


async def _kill_listener_and_wait(
    watcher: OffsetWatcher, writer: AsyncEngine, reader: AsyncEngine, name: str
) -> None:
    proj = uid("p")
    key = (proj, TOPIC, 0)
    waiter = asyncio.create_task(watcher.wait(key, 0, timeout_s=60))

    async def listening() -> int | None:
        return watcher.listen_pid

    pid = await wait_until(listening, timeout=10, interval=0.01, what="the listen connection")
    admin = await _admin(reader)
    try:
        assert await _listeners(admin, name) == [pid]
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Committed while the listener is down or reconnecting: the notification is lost,
        # the reads the watcher falls back to are not.
        await advance(writer, proj, {(TOPIC, 0): 1})
        async with asyncio.timeout(5):
            assert await waiter

        async def reconnected() -> int | None:
            new = watcher.listen_pid
            return new if new not in (None, pid) else None

        new_pid = await wait_until(reconnected, timeout=10, interval=0.01, what="a new listen connection")
        assert await _listeners(admin, name) == [new_pid]
        # Listening again: the next batch is heard (no fallback read within 60 s).
        waiter = asyncio.create_task(watcher.wait(key, 1, timeout_s=60))
        await parked(watcher, 1)
        await advance(writer, proj, {(TOPIC, 0): 2})
        async with asyncio.timeout(3):
            assert await waiter
        await watcher.close()
        assert not watcher.running
        assert await _listeners(admin, name) == []
    finally:
        await admin.close()


async def test_the_reader_stops_with_its_last_waiter_and_starts_again(engines, watchers) -> None:
    writer, reader = engines
    name = uid("watcher")
    watcher = watchers(application_name=name, idle_s=0)
    proj = uid("p")
    await advance(writer, proj, {(TOPIC, 0): 1})
    assert not watcher.running  # nothing starts before the first wait
    for expected in (2, 3):
        waiter = asyncio.create_task(watcher.wait((proj, TOPIC, 0), expected - 1, timeout_s=30))
        await parked(watcher, 1)
        assert watcher.running
        await advance(writer, proj, {(TOPIC, 0): expected})
        async with asyncio.timeout(3):
            assert await waiter

        async def stopped() -> bool:
            return not watcher.running

        await wait_until(stopped, timeout=5, interval=0.01, what="the reader to stop")
    if on_postgres(reader):
        admin = await _admin(reader)
        try:
            assert await _listeners(admin, name) == []
        finally:
            await admin.close()


async def test_a_batch_nobody_waited_for_is_still_seen_by_the_next_waiter(engines, watchers) -> None:
    """Offsets held in memory for a projection go stale when it is notified while nobody waits on it."""
    writer, reader = engines
    watcher = watchers(fallback_s=60.0)  # on PostgreSQL only a notification or a new waiter reads
    busy, quiet = uid("busy"), uid("quiet")
    keeper = asyncio.create_task(watcher.wait((busy, TOPIC, 0), 0, timeout_s=60))  # keeps the reader up
    waiter = asyncio.create_task(watcher.wait((quiet, TOPIC, 0), 0, timeout_s=60))
    await parked(watcher, 2)
    if on_postgres(reader):  # so the read that releases `waiter` leaves `quiet` current

        async def listening() -> int | None:
            return watcher.listen_pid

        await wait_until(listening, timeout=10, interval=0.01, what="the listen connection")
    await advance(writer, quiet, {(TOPIC, 0): 1})
    async with asyncio.timeout(3):
        assert await waiter
    await advance(writer, quiet, {(TOPIC, 0): 2})  # heard while nobody waits on `quiet`
    async with asyncio.timeout(3):
        assert await watcher.wait((quiet, TOPIC, 0), 1, timeout_s=60)
    await advance(writer, busy, {(TOPIC, 0): 1})
    async with asyncio.timeout(3):
        assert await keeper
