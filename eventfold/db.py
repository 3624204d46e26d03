"""Database engines for PostgreSQL (asyncpg) and SQLite (aiosqlite).

SQLite needs two adjustments to behave like a server database under our write
pattern: WAL so readers never block the writer, and `BEGIN IMMEDIATE` on
writing engines so two transactions that read-then-write serialise at BEGIN
instead of failing at COMMIT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """Give plain `postgresql://` and `sqlite://` URLs their async drivers."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def writer_processes(url: str, chosen: int) -> int:
    """How many processes may write to the store at `url` side by side.

    `chosen` (0: one per core, at most 4) on PostgreSQL; SQLite has one
    writer, so there always one.
    """
    if is_sqlite(url):
        return 1
    return chosen or max(1, min(4, os.cpu_count() or 1))


def create_engine(
    url: str, *, pool_size: int = 10, writer: bool = True, pre_ping: bool = True
) -> AsyncEngine:
    """An engine for PostgreSQL or SQLite.

    `pre_ping=False` saves a round trip per transaction; the caller must then
    retry once when a connection turns out dead (its error says
    `connection_invalidated`), as the write store does.
    """
    url = async_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping, pool_recycle=1800
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from the driver so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL" if writer else "PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
