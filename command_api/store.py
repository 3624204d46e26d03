"""The write store: stream heads, outbox and idempotency keys, in one transaction.

A batch of commands (group commit) is decided against the heads it loads and
written in one transaction: new heads by compare-and-set on `version`, their
events into the outbox, their idempotency keys. PostgreSQL additionally locks
the loaded heads (`FOR UPDATE`, in key order) so that several command API
processes queue on a hot stream instead of failing their compare-and-set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from command_api import pg
from command_api.outcomes import (
    Accepted,
    OutboxRecord,
    Outcome,
    PendingCommand,
    Refused,
    Replayed,
    VersionConflict,
)
from command_api.tables import idempotency_keys, outbox, streams
from eventfold import jsonutil
from eventfold.aggregate import Aggregates, Rejected
from eventfold.settings import KafkaSettings
from schemas.mapper import encode_envelope

StreamKey = tuple[str, str]
# Commands are processed in one transaction in chunks of this many keys, so
# that `IN (...)` lists stay well under every driver's parameter limit.
_CHUNK = 400


class CommitConflict(Exception):
    """Another writer moved a stream between our read and our write; retry."""


@dataclass(slots=True)
class _Head:
    version: int
    state: Any
    exists: bool
    start_version: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    outcomes: list[Outcome | int]  # an int points at an earlier command with the same key
    predecessors: list[OutboxRecord]


class WriteStore:
    def __init__(self, engine: AsyncEngine, aggregates: Aggregates, kafka: KafkaSettings) -> None:
        self.engine = engine
        self.aggregates = aggregates
        self.kafka = kafka
        self._pg = engine.dialect.name == "postgresql"

    def commit_concurrency(self, wanted: int) -> int:
        """Transactions in flight at once: SQLite has one writer, so one."""
        return wanted if self._pg else 1

    async def commit(self, batch: Sequence[PendingCommand]) -> CommitResult:
        """Decide and persist a batch; raises CommitConflict if a head moved under us."""
        try:
            return await self._commit(batch)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A pooled connection died with its server (a restart): once more, fresh.
            return await self._commit(batch)

    async def _commit(self, batch: Sequence[PendingCommand]) -> CommitResult:
        keys = sorted({(c.stream_type, c.stream_id) for c in batch})
        idem_keys = sorted({c.idempotency_key for c in batch if c.idempotency_key})
        try:
            async with self.engine.begin() as conn:
                heads = await self._load_heads(conn, keys)
                stored = await self._load_idempotency(conn, idem_keys)
                preds = await self._load_outbox(conn, keys)
                outcomes, records, idem_rows = self._decide(batch, heads, stored)
                await self._write(conn, heads, records, idem_rows)
        except IntegrityError as exc:
            raise CommitConflict(str(exc.orig)) from exc
        return CommitResult(outcomes, preds)

    async def _load_heads(self, conn: AsyncConnection, keys: list[StreamKey]) -> dict[StreamKey, _Head]:
        heads: dict[StreamKey, _Head] = {}
        rows: list[Any] = []
        if self._pg:
            if keys:
                types, ids = zip(*keys, strict=True)
                rows.extend(await conn.execute(pg.HEADS, {"t": list(types), "i": list(ids)}))
        else:
            for chunk in _chunks(keys):
                stmt = (
                    select(streams.c.stream_type, streams.c.stream_id, streams.c.version, streams.c.state)
                    .where(tuple_(streams.c.stream_type, streams.c.stream_id).in_(chunk))
                    .order_by(streams.c.stream_type, streams.c.stream_id)
                )
                rows.extend(await conn.execute(stmt))
        for t, i, v, s in rows:
            state = self.aggregates.get(t).load_state(jsonutil.loads(s))
            heads[(t, i)] = _Head(v, state, True, v)
        for t, i in keys:
            if (t, i) not in heads:
                heads[(t, i)] = _Head(0, self.aggregates.get(t).initial, False, 0)
        return heads

    async def _load_idempotency(
        self, conn: AsyncConnection, keys: list[str]
    ) -> dict[str, tuple[str, int, bytes]]:
        out: dict[str, tuple[str, int, bytes]] = {}
        if self._pg:
            if keys:
                for k, h, st, resp in await conn.execute(pg.IDEMPOTENCY, {"k": keys}):
                    out[k] = (h, st, resp)
            return out
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

    async def _load_outbox(self, conn: AsyncConnection, keys: list[StreamKey]) -> list[OutboxRecord]:
        """Unacknowledged events of these streams, which must be published first."""
        out: list[OutboxRecord] = []
        if self._pg:
            if keys:
                types, ids = zip(*keys, strict=True)
                found = await conn.execute(pg.OUTBOX, {"t": list(types), "i": list(ids)})
                out.extend(_record(r) for r in found.mappings())
            return out
        for chunk in _chunks(keys):
            rows = await conn.execute(
                select(outbox)
                .where(tuple_(outbox.c.stream_type, outbox.c.stream_id).in_(chunk))
                .order_by(outbox.c.id)
            )
            out.extend(_record(r) for r in rows.mappings().all())
        return out

    def _decide(
        self,
        batch: Sequence[PendingCommand],
        heads: dict[StreamKey, _Head],
        stored: dict[str, tuple[str, int, bytes]],
    ) -> tuple[list[Outcome | int], list[OutboxRecord], list[dict[str, Any]]]:
        outcomes: list[Outcome | int] = []
        records: list[OutboxRecord] = []
        idem_rows: list[dict[str, Any]] = []
        first_with_key: dict[str, int] = {}
        now = time.time()
        occurred = datetime.now(UTC)
        for index, cmd in enumerate(batch):
            key = cmd.idempotency_key
            if key is not None:
                if key in stored:
                    h, status, resp = stored[key]
                    outcomes.append(
                        Replayed(status, jsonutil.loads(resp)) if h == cmd.request_hash else _key_reused()
                    )
                    continue
                if key in first_with_key:
                    first = first_with_key[key]
                    same = batch[first].request_hash == cmd.request_hash
                    outcomes.append(first if same else _key_reused())
                    continue
            head = heads[(cmd.stream_type, cmd.stream_id)]
            if cmd.expected_version is not None and cmd.expected_version != head.version:
                outcomes.append(VersionConflict(head.version))
                continue
            aggregate = self.aggregates.get(cmd.stream_type)
            try:
                events = aggregate.decide(head.state, cmd.command)
            except Rejected as r:
                outcomes.append(Refused(r.code, r.detail))
                continue
            state, version = head.state, head.version
            described = []
            topic = self.kafka.topic(cmd.stream_type)
            for event in events:
                state = aggregate.evolve(state, event)
                version += 1
                event_id = jsonutil.new_id()
                name = type(event).__name__
                value, headers = encode_envelope(
                    event_id=event_id,
                    stream_type=cmd.stream_type,
                    stream_id=cmd.stream_id,
                    version=version,
                    type=name,
                    schema_version=type(event).schema_version,
                    occurred_at=occurred,
                    correlation_id=cmd.correlation_id,
                    causation_id=cmd.command_id,
                    data=event.model_dump(mode="json"),
                )
                described.append({"event_id": event_id, "type": name, "version": version})
                records.append(
                    OutboxRecord(
                        cmd.stream_type,
                        cmd.stream_id,
                        version,
                        topic,
                        value,
                        _with_trace(headers, cmd.traceparent),
                    )
                )
            head.state, head.version = state, version
            accepted = Accepted(
                cmd.stream_type,
                cmd.stream_id,
                version,
                described,
                records[len(records) - len(described) :],
            )
            outcomes.append(accepted)
            if key is not None:
                first_with_key[key] = index
                idem_rows.append(
                    {
                        "key": key,
                        "request_hash": cmd.request_hash,
                        # Durable but not yet acknowledged by Kafka; the publisher
                        # replaces this with the 200 and its position.
                        "status": 202,
                        "response": jsonutil.dumps(accepted.body(published=False)),
                        "created_at": now,
                    }
                )
        return outcomes, records, idem_rows

    async def _write(
        self,
        conn: AsyncConnection,
        heads: dict[StreamKey, _Head],
        records: list[OutboxRecord],
        idem_rows: list[dict[str, Any]],
    ) -> None:
        now = time.time()
        new_rows: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        for (t, i), h in heads.items():
            if h.version == h.start_version:
                continue
            row = {
                "t": t,
                "i": i,
                "v": h.version,
                "s": jsonutil.dumps(h.state.model_dump(mode="json")).decode(),
                "u": now,
            }
            (moved if h.exists else new_rows).append({**row, "expected": h.start_version})
        if self._pg:
            await self._write_pg(conn, new_rows, moved, records, idem_rows, now)
            return
        if new_rows:
            await conn.execute(
                insert(streams),
                [
                    {
                        "stream_type": r["t"],
                        "stream_id": r["i"],
                        "version": r["v"],
                        "state": r["s"],
                        "updated_at": r["u"],
                    }
                    for r in new_rows
                ],
            )
        if moved:
            await self._compare_and_set(conn, moved)
        if records:
            await conn.execute(
                insert(outbox),
                [
                    {
                        "stream_type": rec.stream_type,
                        "stream_id": rec.stream_id,
                        "version": rec.version,
                        "topic": rec.topic,
                        "value": rec.value,
                        "headers": _headers_json(rec),
                        "created_at": now,
                    }
                    for rec in records
                ],
            )
        if idem_rows:
            await conn.execute(insert(idempotency_keys), idem_rows)

    async def _write_pg(
        self,
        conn: AsyncConnection,
        new_rows: list[dict[str, Any]],
        moved: list[dict[str, Any]],
        records: list[OutboxRecord],
        idem_rows: list[dict[str, Any]],
        now: float,
    ) -> None:
        """The same writes as `_write`, one fixed statement per table (command_api/pg.py)."""
        if new_rows:
            await conn.execute(pg.INSERT_HEADS, _arrays(new_rows, "tivsu"))
        if moved:
            params = _arrays(moved, "tivsu")
            params["e"] = [r["expected"] for r in moved]
            changed = len((await conn.execute(pg.MOVE_HEADS, params)).all())
            _check_moved(changed, len(moved))
        if records:
            await conn.execute(
                pg.INSERT_OUTBOX,
                {
                    "t": [r.stream_type for r in records],
                    "i": [r.stream_id for r in records],
                    "v": [r.version for r in records],
                    "topic": [r.topic for r in records],
                    "value": [r.value for r in records],
                    "headers": [_headers_json(r) for r in records],
                    "c": [now] * len(records),
                },
            )
        if idem_rows:
            await conn.execute(
                pg.INSERT_IDEMPOTENCY,
                {
                    "k": [r["key"] for r in idem_rows],
                    "h": [r["request_hash"] for r in idem_rows],
                    "st": [r["status"] for r in idem_rows],
                    "r": [r["response"] for r in idem_rows],
                    "c": [r["created_at"] for r in idem_rows],
                },
            )

    async def _compare_and_set(self, conn: AsyncConnection, moved: list[dict[str, Any]]) -> None:
        """Move heads only from the version we read; any other head fails the batch."""
        cas = (
            update(streams)
            .where(
                streams.c.stream_type == bindparam("t"),
                streams.c.stream_id == bindparam("i"),
                streams.c.version == bindparam("expected"),
            )
            .values(version=bindparam("v"), state=bindparam("s"), updated_at=bindparam("u"))
        )
        _check_moved((await conn.execute(cas, moved)).rowcount, len(moved))

    async def finalize(
        self, published: Iterable[OutboxRecord], responses: Iterable[tuple[str, int, bytes]]
    ) -> None:
        """Forget acknowledged events; store final responses of idempotent commands."""
        done = sorted({r.natural_key for r in published})
        responses = list(responses)
        if not done and not responses:
            return
        async with self.engine.begin() as conn:
            if self._pg:
                if done:
                    types, ids, versions = zip(*done, strict=True)
                    await conn.execute(
                        pg.DELETE_OUTBOX, {"t": list(types), "i": list(ids), "v": list(versions)}
                    )
                if responses:
                    keys, statuses, bodies = zip(*responses, strict=True)
                    await conn.execute(
                        pg.SET_RESPONSES, {"k": list(keys), "st": list(statuses), "r": list(bodies)}
                    )
                return
            for chunk in _chunks(done):
                await conn.execute(
                    delete(outbox).where(
                        tuple_(outbox.c.stream_type, outbox.c.stream_id, outbox.c.version).in_(chunk)
                    )
                )
            for key, status, body in responses:
                await conn.execute(
                    update(idempotency_keys)
                    .where(idempotency_keys.c.key == key)
                    .values(status=status, response=body)
                )

    async def unpublished(self, limit: int) -> list[tuple[OutboxRecord, float]]:
        """The oldest outbox rows, in append order, with their creation times."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(outbox).order_by(outbox.c.id).limit(limit))
            return [(_record(r), r["created_at"]) for r in rows.mappings().all()]

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


def _with_trace(headers: list[tuple[str, bytes]], traceparent: str | None) -> list[tuple[str, bytes]]:
    """W3C trace context rides in a Kafka header, next to the envelope's ids."""
    return [*headers, ("traceparent", traceparent.encode())] if traceparent else headers


def _check_moved(changed: int, expected: int) -> None:
    if changed != expected:
        raise CommitConflict(f"{expected - changed} stream(s) moved since they were read")


def _arrays(rows: list[dict[str, Any]], names: str) -> dict[str, list[Any]]:
    """Row dicts keyed by one-letter names, as one list per name (array parameters)."""
    return {n: [r[n] for r in rows] for n in names}


def _headers_json(rec: OutboxRecord) -> bytes:
    return jsonutil.dumps([[k, v.decode()] for k, v in rec.headers])


def _key_reused() -> Refused:
    return Refused(
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    )


def _record(r: Any) -> OutboxRecord:
    return OutboxRecord(
        r["stream_type"],
        r["stream_id"],
        r["version"],
        r["topic"],
        bytes(r["value"]),
        [(k, v.encode()) for k, v in jsonutil.loads(r["headers"])],
    )


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
