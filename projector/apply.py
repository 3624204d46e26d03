"""Apply one batch in one transaction: the path shared by live consumption and replay.

Order inside the transaction: take the status row (is this batch allowed?),
preload the documents, fold in memory, send dead letters, write documents,
child rows, failures, offsets (and NOTIFY them) and counters, commit. The
dead letters go out before the commit, so a crash can repeat a dead letter
but never lose one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold.observability import DEAD_LETTERS
from projector import store
from projector.batch import Decoded, Failure, Folded, fold, stream_ids
from projector.projection import Doc, Projection

log = structlog.get_logger("eventfold.projector")

DeadLetter = Callable[[Projection, Sequence[Failure]], Awaitable[None]]


class DocCache:
    """The documents a sole writer has committed, so it need not read them back.

    Only a replay may use one: it empties the tables and is their only writer
    while the projection is `rebuilding`, so a document it did not write does
    not exist. Past `limit` documents the cache is dropped (bounding memory)
    and misses are read from the database again.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.docs: dict[str, Doc] = {}
        self.limit = limit
        self.complete = True  # every existing document is in `docs`

    async def load(self, conn: AsyncConnection, projection: Projection, ids: Sequence[str]) -> dict[str, Doc]:
        found = {i: self.docs[i] for i in ids if i in self.docs}
        missing = [i for i in ids if i not in found]
        if missing and not self.complete:
            found.update(await store.load_docs(conn, projection.doc_table, missing))
        return found

    def committed(self, docs: Mapping[str, Doc]) -> None:
        if len(self.docs) + len(docs) > self.limit:
            self.docs.clear()
            self.complete = False
        self.docs.update(docs)


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
    cache: DocCache | None = None,
    shared: bool = False,
) -> BatchResult:
    """Apply `items` and store `next_offsets` in one transaction, if the state allows.

    `shared` is for the workers of a parallel replay: they hold the status row
    shared (so batches on disjoint partitions commit side by side) and leave
    the counters to the coordinator, which adds them up at the end.
    """
    async with engine.begin() as conn:
        state = await store.lock_state(conn, projection.name, shared=shared)
        if state not in allowed_states:
            return BatchResult(False)
        folded = await fold_and_write(conn, projection, items, dead_letter=dead_letter, cache=cache)
        await store.record_failures(conn, projection.name, folded.failures)
        await store.save_offsets(conn, projection.name, next_offsets)
        await store.notify_offsets(conn, projection.name)
        if not shared:
            await store.count_applied(
                conn, projection.name, folded.applied, folded.last_event_at, state_after
            )
    if cache is not None:
        cache.committed(folded.docs)
    log_failures(projection, folded.failures, dead_lettered=dead_letter is not None)
    return BatchResult(True, folded)


async def apply_rebuilding(
    engine: AsyncEngine,
    projection: Projection,
    items: Sequence[Decoded | Failure],
    *,
    cache: DocCache,
    dead_letter: DeadLetter | None = None,
    shared: bool = False,
) -> Folded:
    """A replay's or a rebuild's batch: applied only while the projection is `rebuilding`."""
    result = await apply_batch(
        engine,
        projection,
        items,
        next_offsets(items),
        allowed_states=frozenset({store.REBUILDING}),
        dead_letter=dead_letter,
        state_after=store.REBUILDING,
        cache=cache,
        shared=shared,
    )
    if not result.allowed or result.folded is None:
        raise RuntimeError(f"projection {projection.name} left `rebuilding` during the rebuild")
    return result.folded


async def fold_and_write(
    conn: AsyncConnection,
    projection: Projection,
    items: Sequence[Decoded | Failure],
    *,
    dead_letter: DeadLetter | None,
    cache: DocCache | None = None,
) -> Folded:
    """Preload, fold, dead-letter and write the read rows, inside the caller's transaction."""
    ids = stream_ids(items)
    if cache is not None:
        docs = await cache.load(conn, projection, ids)
    else:
        docs = await store.load_docs(conn, projection.doc_table, ids)
    folded = fold(projection, docs, items)
    poison = [f for f in folded.failures if f.dead_letter]
    if poison and dead_letter is not None:
        await dead_letter(projection, poison)
    await store.upsert_docs(conn, projection.doc_table, folded.docs.values())
    for table in projection.child_tables:
        await store.append_rows(conn, table, folded.appends.get(table.name, []))
    return folded


def log_failures(projection: Projection, failures: Sequence[Failure], *, dead_lettered: bool) -> None:
    for f in failures:
        DEAD_LETTERS.labels(projection.name, f.reason).inc()
        log.warning(
            "projection_failure",
            projection=projection.name,
            reason=f.reason,
            dead_lettered=f.dead_letter and dead_lettered,
            topic=f.topic,
            partition=f.partition,
            offset=f.offset,
            detail=f.detail,
        )


def next_offsets(items: Sequence[Decoded | Failure]) -> dict[tuple[str, int], int]:
    """The offset after the last record of each partition in a batch."""
    out: dict[tuple[str, int], int] = {}
    for i in items:
        key = (i.topic, i.partition)
        if i.offset + 1 > out.get(key, -1):
            out[key] = i.offset + 1
    return out
