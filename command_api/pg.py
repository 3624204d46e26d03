"""The write store's statements on PostgreSQL: fixed SQL text, one array per column.

SQLAlchemy Core renders `IN (...)` lists and multi-row VALUES anew for every
batch size, and asyncpg then prepares each new shape: at low rates, where
every group commit has a different size, compiling and preparing cost more
CPU than the statements themselves (as the command API's profile showed). With arrays and
`unnest` the text never changes, so it is compiled once and prepared once
per connection, whatever the batch holds.

`PostgresDialect` sends them; it also locks the loaded heads (`FOR UPDATE`,
in key order) so that several command API processes queue on a hot stream
instead of failing their compare-and-set.

The outbox is a queue: every row is deleted seconds after it is written. A
deleted row stays in the table and its indexes until a VACUUM, and autovacuum
looks at a database about once a minute (`autovacuum_naptime`); at thousands
of commands per second that is hundreds of thousands of dead rows, which every
read of the outbox then walks (measured: the predecessor read went from 0.12
to 1.0 ms per commit, the table to 234 MB for a thousand live rows). So the
command service vacuums the outbox itself, often (`reclaim_outbox`).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from command_api.decision import HeadWrite, IdempotencyWrite, StoredAnswer, StreamKey
from command_api.dialect import NaturalKey, headers_json, outbox_record
from command_api.outcomes import OutboxRecord
from command_api.tables import outbox

_KEYS = "unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[])) AS k(t, i)"

# Rows locked in key order, so two processes on the same streams queue rather than deadlock.
HEADS = text(
    "SELECT s.stream_type, s.stream_id, s.version, s.state FROM streams AS s "
    f"JOIN {_KEYS} ON s.stream_type = k.t AND s.stream_id = k.i "
    "ORDER BY s.stream_type, s.stream_id FOR UPDATE OF s"
)

IDEMPOTENCY = text(
    "SELECT key, request_hash, status, response FROM idempotency_keys WHERE key = ANY(CAST(:k AS varchar[]))"
)

OUTBOX_KEYS = text(
    "SELECT o.stream_type, o.stream_id, o.version "
    f"FROM outbox AS o JOIN {_KEYS} ON o.stream_type = k.t AND o.stream_id = k.i ORDER BY o.id"
)

OUTBOX = text(
    "SELECT o.stream_type, o.stream_id, o.version, o.topic, o.value, o.headers, o.created_at "
    "FROM outbox AS o JOIN unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[])) "
    "AS k(t, i, v) ON o.stream_type = k.t AND o.stream_id = k.i AND o.version = k.v ORDER BY o.id"
)

INSERT_HEADS = text(
    "INSERT INTO streams (stream_type, stream_id, version, state, updated_at) "
    "SELECT * FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[]), "
    "CAST(:s AS text[]), CAST(:u AS float8[]))"
)

# Compare-and-set: a head moves only from the version that was read.
MOVE_HEADS = text(
    "UPDATE streams AS s SET version = n.v, state = n.s, updated_at = n.u "
    "FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:e AS integer[]), "
    "CAST(:v AS integer[]), CAST(:s AS text[]), CAST(:u AS float8[])) AS n(t, i, e, v, s, u) "
    "WHERE s.stream_type = n.t AND s.stream_id = n.i AND s.version = n.e "
    "RETURNING s.stream_id"
)

INSERT_OUTBOX = text(
    "INSERT INTO outbox (stream_type, stream_id, version, topic, value, headers, created_at) "
    "SELECT * FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[]), "
    "CAST(:topic AS varchar[]), CAST(:value AS bytea[]), CAST(:headers AS bytea[]), "
    "CAST(:c AS float8[]))"
)

INSERT_IDEMPOTENCY = text(
    "INSERT INTO idempotency_keys (key, request_hash, status, response, created_at) "
    "SELECT * FROM unnest(CAST(:k AS varchar[]), CAST(:h AS varchar[]), CAST(:st AS integer[]), "
    "CAST(:r AS bytea[]), CAST(:c AS float8[]))"
)

DELETE_OUTBOX = text(
    "DELETE FROM outbox AS o "
    "USING unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[])) AS k(t, i, v) "
    "WHERE o.stream_type = k.t AND o.stream_id = k.i AND o.version = k.v"
)

# SKIP_LOCKED: when another process is vacuuming it already, this one need not wait.
VACUUM_OUTBOX = f"VACUUM (SKIP_LOCKED) {outbox.name}"
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of "skipping vacuum ... lock not available"

SET_RESPONSES = text(
    "UPDATE idempotency_keys AS ik SET status = r.st, response = r.body "
    "FROM unnest(CAST(:k AS varchar[]), CAST(:st AS integer[]), CAST(:r AS bytea[])) AS r(k, st, body) "
    "WHERE ik.key = r.k"
)


class PostgresDialect:
    """The write store's statements on PostgreSQL, one fixed statement per table and step."""

    def commit_concurrency(self, wanted: int) -> int:
        return wanted

    async def load_heads(self, conn: AsyncConnection, keys: list[StreamKey]) -> Sequence[Any]:
        types, ids = zip(*keys, strict=True)
        return (await conn.execute(HEADS, {"t": list(types), "i": list(ids)})).all()

    async def load_idempotency(self, conn: AsyncConnection, keys: list[str]) -> dict[str, StoredAnswer]:
        return {k: (h, st, resp) for k, h, st, resp in await conn.execute(IDEMPOTENCY, {"k": keys})}

    async def load_outbox(
        self, conn: AsyncConnection, keys: list[StreamKey], skip: Container[NaturalKey]
    ) -> list[OutboxRecord]:
        types, ids = zip(*keys, strict=True)
        rows = await conn.execute(OUTBOX_KEYS, {"t": list(types), "i": list(ids)})
        wanted = [(t, i, v) for t, i, v in rows if (t, i, v) not in skip]
        return await self.outbox_records(conn, wanted) if wanted else []

    async def outbox_records(self, conn: AsyncConnection, keys: list[NaturalKey]) -> list[OutboxRecord]:
        t, i, v = zip(*keys, strict=True)
        found = await conn.execute(OUTBOX, {"t": list(t), "i": list(i), "v": list(v)})
        return [outbox_record(r) for r in found.mappings()]

    async def insert_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> None:
        await conn.execute(INSERT_HEADS, _heads(rows, now))

    async def move_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> int:
        params = _heads(rows, now)
        params["e"] = [r.expected for r in rows]
        return len((await conn.execute(MOVE_HEADS, params)).all())

    async def insert_outbox(self, conn: AsyncConnection, records: list[OutboxRecord], now: float) -> None:
        await conn.execute(
            INSERT_OUTBOX,
            {
                "t": [r.stream_type for r in records],
                "i": [r.stream_id for r in records],
                "v": [r.version for r in records],
                "topic": [r.topic for r in records],
                "value": [r.value for r in records],
                "headers": [headers_json(r) for r in records],
                "c": [now] * len(records),
            },
        )

    async def insert_idempotency(
        self, conn: AsyncConnection, rows: list[IdempotencyWrite], now: float
    ) -> None:
        await conn.execute(
            INSERT_IDEMPOTENCY,
            {
                "k": [r.key for r in rows],
                "h": [r.request_hash for r in rows],
                "st": [r.status for r in rows],
                "r": [r.response for r in rows],
                "c": [now] * len(rows),
            },
        )

    async def delete_outbox(self, conn: AsyncConnection, keys: list[NaturalKey]) -> None:
        types, ids, versions = zip(*keys, strict=True)
        await conn.execute(DELETE_OUTBOX, {"t": list(types), "i": list(ids), "v": list(versions)})

    async def set_responses(self, conn: AsyncConnection, responses: list[tuple[str, int, bytes]]) -> None:
        keys, statuses, bodies = zip(*responses, strict=True)
        await conn.execute(SET_RESPONSES, {"k": list(keys), "st": list(statuses), "r": list(bodies)})

    async def reclaim_outbox(self, engine: AsyncEngine) -> str | None:
        """VACUUM the outbox; returns PostgreSQL's reason when it refused (the role may not)."""
        refused: list[str] = []

        def warned(_conn: object, message: Any) -> None:
            # A VACUUM the role may not run is skipped with a WARNING, not an error
            # (its text is in the server's language; its severity and code are not).
            if message.severity_en == "WARNING" and message.sqlstate != _LOCK_NOT_AVAILABLE:
                refused.append(message.message)

        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            driver: Any = (await auto.get_raw_connection()).driver_connection
            driver.add_log_listener(warned)
            try:
                await auto.exec_driver_sql(VACUUM_OUTBOX)
            finally:
                driver.remove_log_listener(warned)
        return refused[0] if refused else None


def _heads(rows: list[HeadWrite], now: float) -> dict[str, list[Any]]:
    """New heads as one array per column."""
    return {
        "t": [r.stream_type for r in rows],
        "i": [r.stream_id for r in rows],
        "v": [r.version for r in rows],
        "s": [r.state for r in rows],
        "u": [now] * len(rows),
    }
