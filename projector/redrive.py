"""Re-drive recorded failures through the live decode, fold and write path.

`projection_failures` keeps the key, value and headers of every record the
projection could not apply: poison records, and the records a version gap
held back. Once the cause is fixed (an upcaster registered, a handler
corrected) `retry` decodes them again and applies them in one transaction
with the status row held, exactly as a live batch would, so the version
guard still decides:

- a poison record blocks its stream: the later events of that stream were
  recorded as gaps. Retrying the poison record and the gaps together (in
  topic, partition, offset order, i.e. stream order) catches the stream up;
  retrying only the poison record leaves the gaps for a later retry.
- a record whose stream is already at or past its version (a replay applied
  it meanwhile) is a duplicate: it changes nothing and its failure is removed.
- a record that still fails keeps its row, with the new reason and detail.

Offsets are not touched: these records lie behind the stored offsets already.
Failure rows without a stored value (gaps recorded by older versions) are
left alone; a replay catches those streams up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold.projection import Projection
from projector import store
from projector.apply import BatchResult, Items, fold_and_write, isolating, log_failures
from projector.batch import Folded, decode
from projector.tables import projection_failures

_F = projection_failures.c


@dataclass(slots=True)
class StoredRecord:
    """A recorded failure read back as the parts of a Kafka record we decode."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class RetryResult:
    retried: int
    applied: int
    duplicates: int
    still_failing: int


async def list_failures(engine: AsyncEngine, projection: str | None = None) -> list[dict[str, Any]]:
    stmt = select(
        _F.id, _F.projection, _F.topic, _F.partition, _F.offset, _F.reason, _F.detail, _F.created_at
    ).order_by(_F.projection, _F.topic, _F.partition, _F.offset)
    if projection is not None:
        stmt = stmt.where(_F.projection == projection)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


def _headers(raw: bytes | None) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in orjson.loads(raw)] if raw else []


async def retry(engine: AsyncEngine, projection: Projection, ids: Sequence[int] | None = None) -> RetryResult:
    """Re-apply the projection's failures (all of them when `ids` is None).

    One transaction, unless the database refuses a record's values: then the
    records are re-applied in halves around it (`apply.isolating`), in order,
    and the refused one keeps its row as `write_rejected`.
    """
    async with engine.connect() as conn:
        # Gaps recorded before their records were kept have nothing to re-drive.
        stmt = select(projection_failures).where(_F.projection == projection.name, _F.value.is_not(None))
        if ids is not None:
            stmt = stmt.where(_F.id.in_(list(ids)))
        rows = (await conn.execute(stmt.order_by(_F.topic, _F.partition, _F.offset))).mappings().all()
    if not rows:
        await _check_state(engine, projection)
        return RetryResult(0, 0, 0, 0)
    by_position = {(r["topic"], r["partition"], r["offset"]): r["id"] for r in rows}
    records = [
        StoredRecord(r["topic"], r["partition"], r["offset"], r["key"], r["value"], _headers(r["headers"]))
        for r in rows
    ]

    async def attempt(items: Items) -> BatchResult:
        async with engine.begin() as conn:
            state = await _locked_state(conn, projection)
            folded = await fold_and_write(conn, projection, items, dead_letter=None)
            await store.record_changes(conn, projection.name, folded)
            failed = {(f.topic, f.partition, f.offset): f for f in folded.failures}
            done = [
                by_position[(i.topic, i.partition, i.offset)]
                for i in items
                if (i.topic, i.partition, i.offset) not in failed
            ]
            # A row another retry removed meanwhile is simply not there to delete.
            if done:
                await conn.execute(delete(projection_failures).where(_F.id.in_(done)))
            for position, f in failed.items():
                await conn.execute(
                    update(projection_failures)
                    .where(_F.id == by_position[position])
                    .values(reason=f.reason, detail=store.storable(f.detail))
                )
            await store.count_applied(conn, projection.name, folded.applied, folded.last_event_at, state)
        log_failures(projection, folded.failures, dead_lettered=False)
        return BatchResult(True, folded)

    result = await isolating(projection, attempt, [decode(projection, r) for r in records])
    folded = result.folded or Folded()
    return RetryResult(len(rows), folded.applied, folded.duplicates, len(folded.failures))


async def _locked_state(conn: AsyncConnection, projection: Projection) -> str:
    state = await store.lock_state(conn, projection.name)
    if state is None or state == store.REBUILDING:
        raise RuntimeError(f"projection {projection.name} is {state or 'unknown'}; retry after it is live")
    return state


async def _check_state(engine: AsyncEngine, projection: Projection) -> None:
    async with engine.begin() as conn:
        await _locked_state(conn, projection)
