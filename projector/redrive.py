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
from sqlalchemy.ext.asyncio import AsyncEngine

from projector import store
from projector.apply import fold_and_write, log_failures
from projector.batch import decode
from projector.projection import Projection
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
    """Re-apply the projection's failures (all of them when `ids` is None)."""
    async with engine.begin() as conn:
        state = await store.lock_state(conn, projection.name)
        if state is None or state == store.REBUILDING:
            raise RuntimeError(
                f"projection {projection.name} is {state or 'unknown'}; retry after it is live"
            )
        # Gaps recorded before their records were kept have nothing to re-drive.
        stmt = select(projection_failures).where(_F.projection == projection.name, _F.value.is_not(None))
        if ids is not None:
            stmt = stmt.where(_F.id.in_(list(ids)))
        rows = (await conn.execute(stmt.order_by(_F.topic, _F.partition, _F.offset))).mappings().all()
        if not rows:
            return RetryResult(0, 0, 0, 0)
        records = [
            StoredRecord(
                r["topic"], r["partition"], r["offset"], r["key"], r["value"], _headers(r["headers"])
            )
            for r in rows
        ]
        folded = await fold_and_write(
            conn, projection, [decode(projection, r) for r in records], dead_letter=None
        )
        failed = {(f.topic, f.partition, f.offset): f for f in folded.failures}
        done = [r["id"] for r in rows if (r["topic"], r["partition"], r["offset"]) not in failed]
        if done:
            await conn.execute(delete(projection_failures).where(_F.id.in_(done)))
        for r in rows:
            f = failed.get((r["topic"], r["partition"], r["offset"]))
            if f is not None:
                await conn.execute(
                    update(projection_failures)
                    .where(_F.id == r["id"])
                    .values(reason=f.reason, detail=f.detail)
                )
        await store.count_applied(conn, projection.name, folded.applied, folded.last_event_at, state)
    log_failures(projection, folded.failures, dead_lettered=False)
    return RetryResult(len(rows), folded.applied, folded.duplicates, len(failed))
