"""Apply one batch in one transaction: the path shared by live consumption and replay.

Order inside the transaction: take the status row (is this batch allowed?),
preload the documents, fold in memory, send dead letters, write documents,
child rows, failures, offsets and counters, commit. The dead letters go out
before the commit, so a crash can repeat a dead letter but never lose one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.observability import DEAD_LETTERS
from projector import store
from projector.batch import Decoded, Failure, Folded, fold, stream_ids
from projector.projection import Projection

log = structlog.get_logger("eventfold.projector")

DeadLetter = Callable[[Projection, Sequence[Failure]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """`applied` is False when the projection's state forbade this batch."""

    allowed: bool
    folded: Folded | None = None


async def apply_batch(
    engine: AsyncEngine,
    projection: Projection,
    items: Sequence[Decoded | Failure],
    next_offsets: Mapping[tuple[str, int], int],
    *,
    allowed_states: frozenset[str],
    dead_letter: DeadLetter | None,
    state_after: str,
) -> BatchResult:
    async with engine.begin() as conn:
        state = await store.lock_state(conn, projection.name)
        if state not in allowed_states:
            return BatchResult(False)
        docs = await store.load_docs(conn, projection.doc_table, stream_ids(items))
        folded = fold(projection, docs, items)
        poison = [f for f in folded.failures if f.dead_letter]
        if poison and dead_letter is not None:
            await dead_letter(projection, poison)
        await store.upsert_docs(conn, projection.doc_table, folded.docs.values())
        for table in projection.child_tables:
            await store.append_rows(conn, table, folded.appends.get(table.name, []))
        await store.record_failures(conn, projection.name, folded.failures)
        await store.save_offsets(conn, projection.name, next_offsets)
        await store.count_applied(conn, projection.name, folded.applied, folded.last_event_at, state_after)
    for f in folded.failures:
        DEAD_LETTERS.labels(projection.name, f.reason).inc()
        log.warning(
            "projection_failure",
            projection=projection.name,
            reason=f.reason,
            dead_lettered=f.dead_letter and dead_letter is not None,
            topic=f.topic,
            partition=f.partition,
            offset=f.offset,
            detail=f.detail,
        )
    return BatchResult(True, folded)


def next_offsets(items: Sequence[Decoded | Failure]) -> dict[tuple[str, int], int]:
    """The offset after the last record of each partition in a batch."""
    out: dict[tuple[str, int], int] = {}
    for i in items:
        key = (i.topic, i.partition)
        if i.offset + 1 > out.get(key, -1):
            out[key] = i.offset + 1
    return out
