"""One PostgreSQL LISTEN connection, kept open: reconnected with backoff when it is lost.

The projector NOTIFYs `eventfold_offsets` with the projection's name in each
batch's transaction (delivered at commit, never for a rollback). `wait_for`
(query_api/waiting.py) and the change feed (query_api/feed.py) each keep one
of these, and read the database when told; while the connection is down
they poll instead, and after it comes back they read once, since what was
committed meanwhile was never announced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("eventfold.query")


async def listen_forever(
    engine: AsyncEngine,
    channel: str,
    *,
    application_name: str,
    notified: Callable[[str], None],
    up: Callable[[int], None],
    down: Callable[[], None],
    what: str,
) -> None:
    """LISTEN on `channel` until cancelled: `notified(payload)` per NOTIFY, `up(pid)` and `down()`
    as the connection comes and goes (`down` also when cancelled while up)."""
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.1

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        notified(payload)

    while True:
        lost = asyncio.Event()
        try:
            conn = await asyncpg.connect(
                dsn, timeout=5, server_settings={"application_name": application_name}
            )
        except Exception as exc:
            log.warning(f"{what}_listen_failed", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        try:
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(channel, on_notify)
            up(conn.get_server_pid())
            delay = 0.1
            await lost.wait()
            log.warning(f"{what}_listen_lost", retry_in=delay)
        except Exception as exc:
            log.warning(f"{what}_listen_failed", error=repr(exc), retry_in=delay)
        finally:
            down()
            await close(conn)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def close(conn: Any) -> None:
    try:
        await conn.close(timeout=2)
    except Exception:
        conn.terminate()


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Until `event` is set or `timeout_s` passes, whichever comes first."""
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
