"""Read queries over the read store; routes call these and shape nothing else."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Executable, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.db import create_engine
from eventfold.problems import Problem
from eventfold.settings import DatabaseSettings
from projector.tables import projection_failures, projection_offsets, projection_status
from query_api.prepared import PreparedRead


def _missing_table(exc: DBAPIError) -> bool:
    # asyncpg: UndefinedTableError (SQLSTATE 42P01); SQLite: "no such table".
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "42P01" or "no such table" in str(orig)


class Reads:
    """The pool of the hot GET routes: one round trip per read, served in arrival order.

    A single SELECT needs no transaction, so on PostgreSQL it runs in
    autocommit (no BEGIN, no ROLLBACK at check-in) and without the pre-ping;
    `rows` retries once when a pooled connection died with its server.
    Together they were three of the four round trips of a GET. A
    `PreparedRead` that can skip SQLAlchemy (query_api/prepared.py) runs on
    an asyncpg pool of its own; any other statement on the engine.
    The gate admits at most as many readers as the pool holds, first come
    first served: behind SQLAlchemy's async pool an asyncio.Queue lets a new
    checkout take the connection just handed to a waiter, which then queues
    again at the back, so under load a few requests starved for seconds.
    asyncpg's pool hands out connections the same way, and the gate is in
    front of both.
    """

    def __init__(self, db: DatabaseSettings) -> None:
        engine = create_engine(db.read_db_url, pool_size=db.db_pool_size, writer=False, pre_ping=False)
        self.direct = engine.dialect.name == "postgresql"
        if self.direct:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.engine = engine
        self.size = 2 * db.db_pool_size  # pool_size plus max_overflow
        self.gate = asyncio.Semaphore(self.size)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._loggers: list[Callable[[Any], None]] = []
        self._connections: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

    async def rows(
        self, stmt: Executable | PreparedRead, params: Mapping[str, Any] | None = None
    ) -> Sequence[Any]:
        """The rows of one statement, positional. A statement built once and given its
        values as `params` skips building it and computing its cache key on each read."""
        async with self.gate:
            for attempt in (1, 2):
                try:
                    if isinstance(stmt, PreparedRead):
                        if stmt.sql is not None and self.direct:
                            pool = self._pool or await self._open()
                            found: list[Any] = await pool.fetch(stmt.sql, *stmt.arguments(params))
                            return found
                        stmt = stmt.statement
                    async with self.engine.connect() as conn:
                        return (await conn.execute(stmt, params)).all()
                except asyncpg.UndefinedTableError:
                    raise _not_ready() from None
                # A connection the server dropped fails as one of these; asyncpg
                # raises InternalClientError ("another operation is in progress")
                # when the drop cut its previous operation short.
                except (
                    asyncpg.ConnectionDoesNotExistError,
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,
                    OSError,
                ):
                    if attempt == 2:
                        raise
                except DBAPIError as exc:
                    if _missing_table(exc):
                        raise _not_ready() from None
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
        raise AssertionError("unreachable")

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                _args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                self._pool = await asyncpg.create_pool(
                    min_size=0, max_size=self.size, init=self._on_connect, reset=_keep_session, **kwargs
                )
            return self._pool

    async def _on_connect(self, conn: asyncpg.Connection) -> None:
        self._connections.add(conn)
        for logger in self._loggers:
            conn.add_query_logger(logger)

    @contextmanager
    def logging_queries(self, logger: Callable[[Any], None]) -> Iterator[None]:
        """Calls `logger` with each statement the direct pool runs (asyncpg's
        `LoggedQuery`, soon after it ran) while inside: for diagnosis and tests."""
        self._loggers.append(logger)
        for conn in self._connections:
            conn.add_query_logger(logger)
        try:
            yield
        finally:
            self._loggers.remove(logger)
            for conn in self._connections:
                conn.remove_query_logger(logger)

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A read sets no session state (no LISTEN, no SET, no lock), so a connection
    goes back to the pool as it is: asyncpg's default reset is a round trip per read."""


def _not_ready() -> Problem:
    # The projector creates a projection's tables when it first starts.
    return Problem(
        503,
        "projection_not_ready",
        "the read model's tables do not exist yet: its projector has not started",
        headers={"Retry-After": "2"},
    )


def utc(value: datetime) -> datetime:
    """The same instant in UTC; SQLite hands back naive datetimes that are UTC by construction.

    PostgreSQL's driver already hands back UTC, which is returned as it is.
    """
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601."""
    return None if value is None else utc(value).isoformat()


async def projection_rows(engine: AsyncEngine, names: list[str]) -> dict[str, dict[str, Any]]:
    """Status, stored offsets and failure counts of each projection."""
    out: dict[str, dict[str, Any]] = {
        n: {
            "state": "unknown",
            "events_applied": 0,
            "last_event_at": None,
            "detail": None,
            "generation": 1,
            "rebuild_progress": None,
            "rebuild_detail": None,
            "offsets": {},
            "failures": {},
        }
        for n in names
    }
    s, o, f = projection_status.c, projection_offsets.c, projection_failures.c
    async with engine.connect() as conn:
        for row in await conn.execute(select(projection_status).where(s.projection.in_(names))):
            entry = out[row.projection]
            entry["state"] = row.state
            entry["events_applied"] = int(row.events_applied)
            entry["detail"] = row.detail
            entry["generation"] = int(row.generation)
            entry["rebuild_progress"] = row.rebuild_progress
            entry["rebuild_detail"] = row.rebuild_detail
            if row.last_event_at is not None:
                entry["last_event_at"] = datetime.fromtimestamp(row.last_event_at, UTC).isoformat()
        for p, t, part, off in await conn.execute(
            select(o.projection, o.topic, o.partition, o.next_offset).where(o.projection.in_(names))
        ):
            out[p]["offsets"][(t, int(part))] = int(off)
        for p, reason, n in await conn.execute(
            select(f.projection, f.reason, func.count())
            .where(f.projection.in_(names))
            .group_by(f.projection, f.reason)
        ):
            out[p]["failures"][reason] = int(n)
    return out


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
