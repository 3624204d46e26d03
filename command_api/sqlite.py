"""The write store's statements on SQLite, in SQLAlchemy Core.

SQLite has one writer at a time, so nothing is locked and commits do not run
concurrently. `IN (...)` lists are sent in chunks that stay well under every
driver's parameter limit.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from command_api.decision import HeadWrite, IdempotencyWrite, StoredAnswer, StreamKey
from command_api.dialect import NaturalKey, headers_json, outbox_record
from command_api.outcomes import OutboxRecord
from command_api.tables import idempotency_keys, outbox, streams

_CHUNK = 400


class SqliteDialect:
    def commit_concurrency(self, wanted: int) -> int:
        """SQLite has one writer, so one."""
        return 1

    async def reclaim_outbox(self, engine: AsyncEngine) -> str | None:
        """Nothing to do: SQLite reuses a deleted row's page at once (no old row versions)."""
        return None

    async def load_heads(self, conn: AsyncConnection, keys: list[StreamKey]) -> Sequence[Any]:
        rows: list[Any] = []
        for chunk in _chunks(keys):
            stmt = (
                select(streams.c.stream_type, streams.c.stream_id, streams.c.version, streams.c.state)
                .where(tuple_(streams.c.stream_type, streams.c.stream_id).in_(chunk))
                .order_by(streams.c.stream_type, streams.c.stream_id)
            )
            rows.extend(await conn.execute(stmt))
        return rows

    async def load_idempotency(self, conn: AsyncConnection, keys: list[str]) -> dict[str, StoredAnswer]:
        out: dict[str, StoredAnswer] = {}
        for chunk in _chunks(keys):
            rows = await conn.execute(
                select(
                    idempotency_keys.c.key,
                    idempotency_keys.c.request_hash,
                    idempotency_keys.c.status,
                    idempotency_keys.c.response,
                ).where(idempotency_keys.c.key.in_(chunk))
            )
            for k, h, st, resp in rows.all():
                out[k] = (h, st, resp)
        return out

    async def load_outbox(
        self, conn: AsyncConnection, keys: list[StreamKey], skip: Container[NaturalKey]
    ) -> list[OutboxRecord]:
        o = outbox.c
        wanted: list[NaturalKey] = []
        for chunk in _chunks(keys):
            rows = await conn.execute(
                select(o.stream_type, o.stream_id, o.version).where(
                    tuple_(o.stream_type, o.stream_id).in_(chunk)
                )
            )
            wanted.extend((t, i, v) for t, i, v in rows if (t, i, v) not in skip)
        return await self.outbox_records(conn, wanted) if wanted else []

    async def outbox_records(self, conn: AsyncConnection, keys: list[NaturalKey]) -> list[OutboxRecord]:
        o = outbox.c
        out: list[tuple[int, OutboxRecord]] = []
        for chunk in _chunks(keys):
            rows = await conn.execute(
                select(outbox).where(tuple_(o.stream_type, o.stream_id, o.version).in_(chunk))
            )
            out.extend((r["id"], outbox_record(r)) for r in rows.mappings().all())
        return [rec for _, rec in sorted(out, key=lambda x: x[0])]

    async def insert_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> None:
        await conn.execute(
            insert(streams),
            [
                {
                    "stream_type": r.stream_type,
                    "stream_id": r.stream_id,
                    "version": r.version,
                    "state": r.state,
                    "updated_at": now,
                }
                for r in rows
            ],
        )

    async def move_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> int:
        cas = (
            update(streams)
            .where(
                streams.c.stream_type == bindparam("t"),
                streams.c.stream_id == bindparam("i"),
                streams.c.version == bindparam("expected"),
            )
            .values(version=bindparam("v"), state=bindparam("s"), updated_at=bindparam("u"))
        )
        params = [
            {
                "t": r.stream_type,
                "i": r.stream_id,
                "expected": r.expected,
                "v": r.version,
                "s": r.state,
                "u": now,
            }
            for r in rows
        ]
        return (await conn.execute(cas, params)).rowcount

    async def insert_outbox(self, conn: AsyncConnection, records: list[OutboxRecord], now: float) -> None:
        await conn.execute(
            insert(outbox),
            [
                {
                    "stream_type": rec.stream_type,
                    "stream_id": rec.stream_id,
                    "version": rec.version,
                    "topic": rec.topic,
                    "value": rec.value,
                    "headers": headers_json(rec),
                    "created_at": now,
                }
                for rec in records
            ],
        )

    async def insert_idempotency(
        self, conn: AsyncConnection, rows: list[IdempotencyWrite], now: float
    ) -> None:
        await conn.execute(
            insert(idempotency_keys),
            [
                {
                    "key": r.key,
                    "request_hash": r.request_hash,
                    "status": r.status,
                    "response": r.response,
                    "created_at": now,
                }
                for r in rows
            ],
        )

    async def delete_outbox(self, conn: AsyncConnection, keys: list[NaturalKey]) -> None:
        for chunk in _chunks(keys):
            await conn.execute(
                delete(outbox).where(
                    tuple_(outbox.c.stream_type, outbox.c.stream_id, outbox.c.version).in_(chunk)
                )
            )

    async def set_responses(self, conn: AsyncConnection, responses: list[tuple[str, int, bytes]]) -> None:
        for key, status, body in responses:
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.key == key)
                .values(status=status, response=body)
            )


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
