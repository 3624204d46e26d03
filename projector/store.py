"""Read-store I/O of the projector: documents, rows, offsets, failures, status.

Every write is a batch statement (one SELECT to preload, one executemany per
table), with the dialect's own upsert so PostgreSQL and SQLite behave alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Table, bindparam, delete, func, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold import jsonutil
from eventfold.projection import Doc, Projection
from projector.batch import Failure, Folded
from projector.tables import (
    CHANGE_SLOTS,
    projection_failures,
    projection_offsets,
    projection_status,
    view_change_horizons,
    view_changes,
)

TopicPartitionKey = tuple[str, int]
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]  # quoting and type names only
_CHUNK = 1000
LIVE, REBUILDING, FAILED = "live", "rebuilding", "failed"
# A blue/green rebuild is handing over (projector/rebuild.py): live batches wait.
SWITCHING = "switching"


# SQLSTATE classes of errors about the values written, not the database's health:
# 22 data exception (a NUL in text, a string too long, a number out of range),
# 23 integrity constraint violation (CHECK, NOT NULL, UNIQUE, foreign key).
_RECORD_SQLSTATES = ("22", "23")


def refuses_values(exc: BaseException) -> bool:
    """True when the database refused a write for the values in it, not for its own state.

    Such a failure repeats for as long as the same rows are written, so the
    caller isolates the record behind them; anything else (connection lost,
    server down, a deadlock, a missing table) is worth retrying as it is.
    asyncpg's data errors reach SQLAlchemy as a bare DBAPIError, so the
    SQLSTATE decides on PostgreSQL; SQLite's come as IntegrityError/DataError.
    """
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and not exc.connection_invalidated:
        state = getattr(exc.orig, "sqlstate", None)
        return isinstance(state, str) and state[:2] in _RECORD_SQLSTATES
    return False


def refusal(exc: BaseException) -> str:
    """The database's own words for a refused write, without the statement or its parameters."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    driver = orig.__cause__ or orig  # asyncpg's own exception names the condition
    message = str(orig.args[0]) if orig.args else str(orig)
    state = getattr(orig, "sqlstate", None)
    return f"{type(driver).__name__}: {message}" + (f" (SQLSTATE {state})" if state else "")


def _insert(conn: AsyncConnection, table: Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def upsert(
    conn: AsyncConnection, table: Table, keys: Sequence[str], sets: Sequence[str], newer: str = ""
) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET each of `sets` to the new row's value.

    With `newer`, a stored row is only overwritten by one whose `newer` column
    is greater (a version, an offset). Built once per table and shape: each
    build makes an `excluded` alias of the table, a web of reference cycles
    that only the cyclic garbage collector frees, and built per batch that
    garbage kept a long-running projector's memory growing.
    """
    return _upsert(conn.dialect.name, table, tuple(keys), tuple(sets), newer)


@functools.lru_cache(maxsize=256)
def _upsert(dialect: str, table: Table, keys: tuple[str, ...], sets: tuple[str, ...], newer: str) -> Any:
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    return ins.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={c: ins.excluded[c] for c in sets},
        where=table.c[newer] < ins.excluded[newer] if newer else None,
    )


async def lock_state(conn: AsyncConnection, projection: str, *, shared: bool = False) -> str | None:
    """Read the projection's state, holding its status row until commit.

    On PostgreSQL the row lock makes a replay's switch to `rebuilding` wait
    for an in-flight batch, and a batch wait for the switch; SQLite gets the
    same from BEGIN IMMEDIATE, which serialises writers. A `shared` hold
    (FOR SHARE) still excludes the switch but not other shared holders.
    """
    stmt = _STATE_HELD[shared] if conn.dialect.name == "postgresql" else _STATE
    return (await conn.execute(stmt, {"p_projection": projection})).scalar_one_or_none()


# Statements run on every batch are built once, with their values bound at execution.
_STATE = select(projection_status.c.state).where(projection_status.c.projection == bindparam("p_projection"))
_STATE_HELD = {False: _STATE.with_for_update(), True: _STATE.with_for_update(read=True)}


async def load_docs(conn: AsyncConnection, table: Table, ids: Sequence[str]) -> dict[str, Doc]:
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        # One array parameter: one prepared statement whatever the batch size
        # (an IN list of n binds is a new statement for every n).
        prep = conn.dialect.identifier_preparer
        sql = text(f"SELECT * FROM {prep.format_table(table)} WHERE id = ANY(CAST(:ids AS text[]))")
        rows = await conn.execute(sql, {"ids": list(ids)})
        return {row["id"]: dict(row) for row in rows.mappings()}
    docs: dict[str, Doc] = {}
    for start in range(0, len(ids), _CHUNK):
        found = await conn.execute(select(table).where(table.c.id.in_(ids[start : start + _CHUNK])))
        for row in found.mappings():
            docs[row["id"]] = dict(row)
    return docs


def _unnest_insert(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], tail: str) -> Any:
    """One `INSERT ... SELECT * FROM unnest(arrays)` for many rows (PostgreSQL).

    A column per array parameter keeps the statement the same whatever the
    batch size, so asyncpg prepares it once, and sends the rows in one go:
    several times faster than an executemany of a VALUES insert.
    """
    names = tuple(c.name for c in table.c if c.name in rows[0])
    params = {f"p{i}": [r.get(n) for r in rows] for i, n in enumerate(names)}
    return conn.execute(_unnest_sql(table, names, tail), params)


@functools.lru_cache(maxsize=256)
def _unnest_sql(table: Table, names: tuple[str, ...], tail: str) -> Any:
    """The statement's text, built once per table and column set: it is the same for every batch."""
    prep = _POSTGRESQL.identifier_preparer
    arrays = ", ".join(
        f"CAST(:p{i} AS {table.c[n].type.compile(dialect=_POSTGRESQL)}[])" for i, n in enumerate(names)
    )
    return text(
        f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(n) for n in names)}) "
        f"SELECT * FROM unnest({arrays}) {tail}"
    )


async def upsert_docs(conn: AsyncConnection, table: Table, docs: Iterable[Doc]) -> None:
    """Write final documents; a row already at a later version is left alone."""
    rows = list(docs)
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _unnest_insert(conn, table, rows, _newer_docs_win(table))
        return
    cols = [c.name for c in table.c if c.name != "id"]
    await conn.execute(upsert(conn, table, ["id"], cols, newer="version"), rows)


@functools.lru_cache(maxsize=256)
def _newer_docs_win(table: Table) -> str:
    prep = _POSTGRESQL.identifier_preparer
    names = [c.name for c in table.c if c.name != "id"]
    sets = ", ".join(f"{prep.quote(n)} = EXCLUDED.{prep.quote(n)}" for n in names)
    newer = f"{prep.format_table(table)}.version < EXCLUDED.version"
    return f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE {newer}"


async def append_rows(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Child rows are keyed by (stream, version), so a repeat does nothing."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _unnest_insert(conn, table, rows, "ON CONFLICT DO NOTHING")
    else:
        await conn.execute(_insert(conn, table).on_conflict_do_nothing(), rows)


def storable(detail: str) -> str:
    """A failure's detail may quote the record; a NUL in it would make this write fail too."""
    return detail.replace("\x00", "\\x00")


async def record_failures(conn: AsyncConnection, projection: str, failures: Sequence[Failure]) -> None:
    if not failures:
        return
    now = time.time()
    rows = [
        {
            "projection": projection,
            "topic": f.topic,
            "partition": f.partition,
            "offset": f.offset,
            "reason": f.reason,
            "detail": storable(f.detail),
            "key": f.key,
            "value": f.value,
            "headers": jsonutil.dumps([[k, v.decode(errors="replace")] for k, v in f.headers]),
            "created_at": now,
        }
        for f in failures
    ]
    c = projection_failures.c
    stmt = _insert(conn, projection_failures).on_conflict_do_nothing(
        index_elements=[c.projection, c.topic, c.partition, c.offset]
    )
    await conn.execute(stmt, rows)


async def save_offsets(
    conn: AsyncConnection, projection: str, offsets: Mapping[TopicPartitionKey, int]
) -> None:
    """Store next offsets; they only move forward, whoever commits last."""
    if not offsets:
        return
    now = time.time()
    stmt = upsert(
        conn,
        projection_offsets,
        ["projection", "topic", "partition"],
        ["next_offset", "updated_at"],
        newer="next_offset",
    )
    rows = [
        {"projection": projection, "topic": t, "partition": p, "next_offset": o, "updated_at": now}
        for (t, p), o in sorted(offsets.items())
    ]
    await conn.execute(stmt, rows)


async def stored_offsets_total(engine: AsyncEngine, projection: str, topic: str) -> int:
    """The sum of the next offsets stored for `topic`: records behind the projection."""
    c = projection_offsets.c
    async with engine.connect() as conn:
        total = await conn.scalar(
            select(func.coalesce(func.sum(c.next_offset), 0)).where(
                c.projection == projection, c.topic == topic
            )
        )
    return int(total or 0)


async def count_applied(
    conn: AsyncConnection, projection: str, applied: int, last_event_at: datetime | None, state: str
) -> None:
    stmt = _count_applied(conn.dialect.name, last_event_at is not None)
    params = {"p_projection": projection, "p_applied": applied, "p_now": time.time(), "p_state": state}
    if last_event_at is not None:
        params["p_last"] = last_event_at.timestamp()
    await conn.execute(stmt, params)


@functools.lru_cache(maxsize=4)
def _count_applied(dialect: str, with_last: bool) -> Any:
    c = projection_status.c
    values: dict[str, Any] = {
        "events_applied": c.events_applied + bindparam("p_applied"),
        "updated_at": bindparam("p_now"),
        "state": bindparam("p_state"),
        "detail": None,
    }
    if with_last:
        ts = bindparam("p_last", type_=Float)
        latest = func.max if dialect == "sqlite" else func.greatest
        values["last_event_at"] = func.coalesce(latest(c.last_event_at, ts), ts)
    return update(projection_status).where(c.projection == bindparam("p_projection")).values(**values)


async def ensure_status(engine: AsyncEngine, projection: Projection) -> None:
    """Create the status row (state `live`) if this projection never ran."""
    await ensure_status_row(engine, projection.name, projection.version)


async def ensure_status_row(engine: AsyncEngine, name: str, version: int) -> None:
    """Create the status row of a projection or reactor (state `live`) if it never ran."""
    async with engine.begin() as conn:
        stmt = _insert(conn, projection_status).on_conflict_do_nothing(
            index_elements=[projection_status.c.projection]
        )
        await conn.execute(
            stmt,
            {
                "projection": name,
                "state": LIVE,
                "version": version,
                "events_applied": 0,
                "updated_at": time.time(),
            },
        )


async def read_state(engine: AsyncEngine, projection: str) -> str | None:
    async with engine.connect() as conn:
        stmt = select(projection_status.c.state).where(projection_status.c.projection == projection)
        return (await conn.execute(stmt)).scalar_one_or_none()


async def mark_failed(engine: AsyncEngine, projection: str, detail: str) -> None:
    """Best effort: say the projection is stuck, unless a rebuild owns it."""
    c = projection_status.c
    async with engine.begin() as conn:
        await conn.execute(
            update(projection_status)
            .where(c.projection == projection, c.state.notin_([REBUILDING, SWITCHING]))
            .values(state=FAILED, detail=detail[:2000], updated_at=time.time())
        )


async def clear_failed(engine: AsyncEngine, projection: str) -> None:
    """Back to `live` after `mark_failed`, once the runtime can consume again."""
    c = projection_status.c
    async with engine.begin() as conn:
        await conn.execute(
            update(projection_status)
            .where(c.projection == projection, c.state == FAILED)
            .values(state=LIVE, detail=None, updated_at=time.time())
        )


async def load_offsets(
    engine: AsyncEngine, projection: str, topics: Iterable[str]
) -> dict[TopicPartitionKey, int]:
    c = projection_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.topic, c.partition, c.next_offset).where(
                c.projection == projection, c.topic.in_(sorted(set(topics)))
            )
        )
        return {(t, int(p)): int(o) for t, p, o in rows.all()}


async def renew_claim(engine: AsyncEngine, projection: str, claimed: str, *others: str) -> None:
    """A running replay's heartbeat: its claim on `projection` (and its own rows `others`) stays fresh."""
    c = projection_status.c
    async with engine.begin() as conn:
        now = time.time()
        await conn.execute(
            update(projection_status)
            .where(c.projection == projection, c.state == claimed)
            .values(updated_at=now)
        )
        if others:
            await conn.execute(
                update(projection_status).where(c.projection.in_(others)).values(updated_at=now)
            )


async def release_stale_claim(engine: AsyncEngine, projection: str, claimed: str, lease_s: float) -> bool:
    """Take the projection back from a replay that stopped renewing its claim (it died).

    Safe because a replay builds into tables of its own: the live tables and
    offsets are as the live runtime left them. True if the claim was released.
    """
    c = projection_status.c
    async with engine.begin() as conn:
        done = await conn.execute(
            update(projection_status)
            .where(c.projection == projection, c.state == claimed, c.updated_at < time.time() - lease_s)
            .values(state=LIVE, updated_at=time.time())
        )
    return bool(done.rowcount)


# The channel the query API LISTENs on to answer `wait_for` without polling.
OFFSETS_CHANNEL = "eventfold_offsets"


async def notify_offsets(conn: AsyncConnection, projection: str) -> None:
    """Tell listeners this projection's offsets moved, inside the caller's transaction.

    PostgreSQL delivers a NOTIFY at commit and drops it on rollback, so a
    listener never hears of offsets it cannot read. SQLite has no NOTIFY:
    its waiters poll instead.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :projection)"),
            {"channel": OFFSETS_CHANNEL, "projection": projection},
        )


async def record_changes(conn: AsyncConnection, projection: str, folded: Folded) -> None:
    """The batch's change-feed row: the documents it changed, inside the batch's transaction.

    The caller holds the projection's status row (lock_state), which is what
    makes the rows' `seq` grow in commit order.
    """
    if not folded.positions:
        return
    now = time.time()
    changed = [
        (doc_id, int(folded.docs[doc_id]["version"]))
        for doc_id, _ in sorted(folded.positions.items(), key=lambda kv: kv[1])
    ]
    rows = [
        {
            "projection": projection,
            "changes": jsonutil.dumps(changed[start : start + CHANGE_SLOTS]).decode(),
            "committed_at": now,
        }
        for start in range(0, len(changed), CHANGE_SLOTS)
    ]
    await conn.execute(_RECORD_CHANGES, rows)


_RECORD_CHANGES = view_changes.insert()


async def prune_changes(engine: AsyncEngine, projection: str, older_than: float) -> int:
    """Drop change-feed rows committed before `older_than`; record how far. Returns rows dropped."""
    c = view_changes.c
    async with engine.begin() as conn:
        through = await conn.scalar(
            select(func.max(c.seq)).where(c.projection == projection, c.committed_at < older_than)
        )
        if through is None:
            return 0
        done = await conn.execute(delete(view_changes).where(c.projection == projection, c.seq <= through))
        await conn.execute(
            upsert(conn, view_change_horizons, ["projection"], ["seq"]),
            {"projection": projection, "seq": int(through)},
        )
    return int(done.rowcount or 0)
