"""The write store: stream heads, outbox and idempotency keys, in one transaction.

A batch of commands (group commit) is decided against the heads it loads
(command_api/decision.py) and written in one transaction: new heads by
compare-and-set on `version`, their events into the outbox, their idempotency
keys. How each database is asked is its dialect's (command_api/dialect.py),
chosen once when the store is built.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from command_api.decision import Decision, Head, StreamKey, decide_batch
from command_api.dialect import NaturalKey, WriteDialect, outbox_record
from command_api.outcomes import OutboxRecord, Outcome, PendingCommand
from command_api.pg import PostgresDialect
from command_api.sqlite import SqliteDialect
from command_api.tables import idempotency_keys, outbox, streams
from eventfold import jsonutil
from eventfold.aggregate import Aggregates
from eventfold.settings import KafkaSettings


class CommitConflict(Exception):
    """Another writer moved a stream between our read and our write; retry."""


@dataclass(frozen=True, slots=True)
class CommitResult:
    outcomes: list[Outcome | int]  # an int points at an earlier command with the same key
    predecessors: list[OutboxRecord]


class WriteStore:
    def __init__(self, engine: AsyncEngine, aggregates: Aggregates, kafka: KafkaSettings) -> None:
        self.engine = engine
        self.aggregates = aggregates
        self.kafka = kafka
        self._sql: WriteDialect = (
            PostgresDialect() if engine.dialect.name == "postgresql" else SqliteDialect()
        )

    def commit_concurrency(self, wanted: int) -> int:
        """Transactions in flight at once, as many as the database takes."""
        return self._sql.commit_concurrency(wanted)

    async def commit(
        self, batch: Sequence[PendingCommand], in_flight: Container[NaturalKey] = frozenset()
    ) -> CommitResult:
        """Decide and persist a batch; raises CommitConflict if a head moved under us.

        The result's predecessors (unacknowledged events of the batch's streams
        left in the outbox) leave out those in `in_flight`: events the caller
        is publishing already.
        """
        try:
            return await self._commit(batch, in_flight)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A pooled connection died with its server (a restart): once more, fresh.
            return await self._commit(batch, in_flight)

    async def _commit(
        self, batch: Sequence[PendingCommand], in_flight: Container[NaturalKey]
    ) -> CommitResult:
        keys = sorted({(c.stream_type, c.stream_id) for c in batch})
        idem_keys = sorted({c.idempotency_key for c in batch if c.idempotency_key})
        try:
            async with self.engine.begin() as conn:
                heads = await self._load_heads(conn, keys)
                stored = await self._sql.load_idempotency(conn, idem_keys) if idem_keys else {}
                preds = await self._sql.load_outbox(conn, keys, in_flight) if keys else []
                now = time.time()
                decision = decide_batch(
                    batch, heads, stored, self.aggregates, self.kafka.topic, datetime.fromtimestamp(now, UTC)
                )
                await self._write(conn, decision, now)
        except IntegrityError as exc:
            raise CommitConflict(str(exc.orig)) from exc
        return CommitResult(decision.outcomes, preds)

    async def _load_heads(self, conn: AsyncConnection, keys: list[StreamKey]) -> dict[StreamKey, Head]:
        """Every stream of `keys`: those with a row, then new ones at version 0, each in key order."""
        heads: dict[StreamKey, Head] = {}
        rows = await self._sql.load_heads(conn, keys) if keys else ()
        for t, i, v, s in rows:
            heads[(t, i)] = Head(v, self.aggregates.get(t).load_state(jsonutil.loads(s)), True)
        for t, i in keys:
            if (t, i) not in heads:
                heads[(t, i)] = Head(0, self.aggregates.get(t).initial, False)
        return heads

    async def _write(self, conn: AsyncConnection, decision: Decision, now: float) -> None:
        if decision.created:
            await self._sql.insert_heads(conn, decision.created, now)
        if decision.moved:
            # Heads move only from the version we read; any other head fails the batch.
            _check_moved(await self._sql.move_heads(conn, decision.moved, now), len(decision.moved))
        if decision.records:
            await self._sql.insert_outbox(conn, decision.records, now)
        if decision.idempotency:
            await self._sql.insert_idempotency(conn, decision.idempotency, now)

    async def finalize(
        self, published: Iterable[OutboxRecord], responses: Iterable[tuple[str, int, bytes]]
    ) -> None:
        """Forget acknowledged events; store final responses of idempotent commands."""
        done = sorted({r.natural_key for r in published})
        responses = list(responses)
        if not done and not responses:
            return
        async with self.engine.begin() as conn:
            if done:
                await self._sql.delete_outbox(conn, done)
            if responses:
                await self._sql.set_responses(conn, responses)

    async def waiting(self, limit: int) -> list[tuple[NaturalKey, float]]:
        """The keys and creation times of the oldest outbox rows, in append order.

        Their values and headers are not read: under load nearly all of them
        are on their way to Kafka from the process that wrote them.
        """
        o = outbox.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(o.stream_type, o.stream_id, o.version, o.created_at).order_by(o.id).limit(limit)
            )
            return [((t, i, int(v)), float(c)) for t, i, v, c in rows]

    async def outbox_records(self, keys: Sequence[NaturalKey]) -> list[OutboxRecord]:
        """The outbox rows of these events still there, whole, in append order."""
        if not keys:
            return []
        async with self.engine.connect() as conn:
            return await self._sql.outbox_records(conn, list(keys))

    async def unpublished(self, limit: int) -> list[tuple[OutboxRecord, float]]:
        """The oldest outbox rows, in append order, with their creation times."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(outbox).order_by(outbox.c.id).limit(limit))
            return [(outbox_record(r), r["created_at"]) for r in rows.mappings().all()]

    async def reclaim_outbox(self) -> str | None:
        """Reclaim the space of cleared outbox rows; returns why the database refused, else None."""
        return await self._sql.reclaim_outbox(self.engine)

    async def outbox_stats(self) -> tuple[int, float | None]:
        """How many rows wait for Kafka, and when the oldest was written."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(func.count(), func.min(outbox.c.created_at)))).one()
        return int(row[0]), row[1]

    async def expire_idempotency_keys(self, ttl_s: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < time.time() - ttl_s)
            )

    async def read_stream(self, stream_type: str, stream_id: str) -> tuple[int, dict[str, Any]] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(streams.c.version, streams.c.state).where(
                        streams.c.stream_type == stream_type, streams.c.stream_id == stream_id
                    )
                )
            ).first()
        if row is None:
            return None
        return int(row[0]), jsonutil.loads(row[1])

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")


def _check_moved(changed: int, expected: int) -> None:
    if changed != expected:
        raise CommitConflict(f"{expected - changed} stream(s) moved since they were read")
