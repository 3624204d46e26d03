"""Apply one batch in one transaction: the path shared by live consumption and replay.

Order inside the transaction: take the status row (is this batch allowed?),
preload the documents, fold in memory, write documents and child rows, send
dead letters, write failures, the change feed's rows (live batches only),
offsets (and NOTIFY them) and counters, commit.
The dead letters go out before the commit, so a crash can repeat a dead
letter but never lose one; they go out after the row writes, so a write the
database refuses sends none.

A write the database refuses for the values in it (`store.refuses_values`)
would fail every retry of the batch. `isolating` then applies the batch in
halves, each in its own transaction, until the record at fault stands alone,
and applies that record as a `write_rejected` failure: dead-lettered with the
database's reason, its offset passed, its stream blocked behind it like any
poison (later events of that stream are version gaps). Every half is a prefix
of each of its partitions, so offsets still only move forward, over records
applied in order. Any other error propagates, for the caller to retry whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold.observability import DEAD_LETTERS
from eventfold.projection import Doc, Projection
from projector import store
from projector.batch import Decoded, Failure, Folded, failed, fold, stream_ids

log = structlog.get_logger("eventfold.projector")

DeadLetter = Callable[[Projection, Sequence[Failure]], Awaitable[None]]
Items = Sequence[Decoded | Failure]


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
    """`allowed` is False when the projection's state forbade this batch."""

    allowed: bool
    folded: Folded | None = None


async def apply_batch(
    engine: AsyncEngine,
    projection: Projection,
    items: Items,
    offsets: Mapping[tuple[str, int], int],
    *,
    allowed_states: frozenset[str],
    dead_letter: DeadLetter | None,
    state_after: str,
    cache: DocCache | None = None,
    shared: bool = False,
) -> BatchResult:
    """Apply `items` and store `offsets` in one transaction, if the state allows.

    `shared` is for the workers of a parallel replay: they hold the status row
    shared (so batches on disjoint partitions commit side by side) and leave
    the counters to the coordinator, which adds them up at the end. A batch
    the database refuses for one record's sake is applied around that record
    (see the module docstring).
    """
    end = _position(items[-1]) if items else None

    async def attempt(part: Items) -> BatchResult:
        # The part that ends the batch stores the caller's offsets; earlier parts their own.
        stored = offsets if not part or _position(part[-1]) == end else next_offsets(part)
        async with engine.begin() as conn:
            state = await store.lock_state(conn, projection.name, shared=shared)
            if state not in allowed_states:
                return BatchResult(False)
            folded = await fold_and_write(conn, projection, part, dead_letter=dead_letter, cache=cache)
            await store.record_failures(conn, projection.name, folded.failures)
            if state_after == store.LIVE:
                # Live subscribers are sent what live batches change; a rebuild's
                # subscribers get a reset at the swap instead of its history.
                await store.record_changes(conn, projection.name, folded)
            await store.save_offsets(conn, projection.name, stored)
            await store.notify_offsets(conn, projection.name)
            if not shared:
                await store.count_applied(
                    conn, projection.name, folded.applied, folded.last_event_at, state_after
                )
        if cache is not None:
            cache.committed(folded.docs)
        log_failures(projection, folded.failures, dead_lettered=dead_letter is not None)
        return BatchResult(True, folded)

    return await isolating(projection, attempt, items)


Attempt = Callable[[Items], Awaitable[BatchResult]]


async def isolating(projection: Projection, attempt: Attempt, items: Items) -> BatchResult:
    """`attempt(items)`; if the database refuses its values, the halves, down to the record at fault.

    That record is attempted once more as a `write_rejected` failure, which
    writes no row of it. A lone failure the database still refuses cannot be
    recorded: that error propagates, as does every error not about the values.
    """
    try:
        return await attempt(items)
    except Exception as exc:
        if not store.refuses_values(exc) or not items:
            raise
        if len(items) == 1:
            (item,) = items
            if isinstance(item, Failure):
                raise
            return await attempt([failed(item, "write_rejected", store.refusal(exc))])
        log.warning(
            "batch_refused_isolating",
            projection=projection.name,
            records=len(items),
            detail=store.refusal(exc),
        )
    mid = len(items) // 2
    first = await isolating(projection, attempt, items[:mid])
    if not first.allowed:
        return first
    second = await isolating(projection, attempt, items[mid:])
    return BatchResult(second.allowed, _merge(first.folded, second.folded))


def _position(item: Decoded | Failure) -> tuple[str, int, int]:
    return item.topic, item.partition, item.offset


def _merge(a: Folded | None, b: Folded | None) -> Folded | None:
    if a is None or b is None:
        return a or b
    out = Folded(
        docs={**a.docs, **b.docs},
        failures=a.failures + b.failures,
        applied=a.applied + b.applied,
        duplicates=a.duplicates + b.duplicates,
        last_event_at=max((t for t in (a.last_event_at, b.last_event_at) if t is not None), default=None),
        positions={**a.positions, **b.positions},
    )
    for folded in (a, b):
        for table, rows in folded.appends.items():
            out.appends.setdefault(table, []).extend(rows)
    return out


async def apply_rebuilding(
    engine: AsyncEngine,
    projection: Projection,
    items: Items,
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
    items: Items,
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
    await store.upsert_docs(conn, projection.doc_table, folded.docs.values())
    for table in projection.child_tables:
        await store.append_rows(conn, table, folded.appends.get(table.name, []))
    poison = [f for f in folded.failures if f.dead_letter]
    if poison and dead_letter is not None:
        await dead_letter(projection, poison)
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


def next_offsets(items: Items) -> dict[tuple[str, int], int]:
    """The offset after the last record of each partition in a batch."""
    out: dict[tuple[str, int], int] = {}
    for i in items:
        key = (i.topic, i.partition)
        if i.offset + 1 > out.get(key, -1):
            out[key] = i.offset + 1
    return out
