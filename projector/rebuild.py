"""Zero-downtime (blue/green) rebuild of a projection by renaming tables.

Generation g+1 of the projection's tables (`<table>__g2`, ...) is built from
offset 0 under its own offsets key (`<projection>@g2`) and status row, while the
live projector keeps writing generation g (the tables under their declared names)
and the query API keeps reading it. Catch-up rounds shrink the lag; then the
handover sets the live state to `switching` (the live runtime pauses), catches
the new generation up to the now frozen live offsets, and in ONE transaction
renames the live tables away, renames the new ones into their place and moves
the offsets, failures and status over. A reader sees the old tables or the new
ones, never neither: on PostgreSQL a query waits on the rename's lock for the
few milliseconds of the swap, then resolves the name again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Table, delete, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold.kafka import commit_group_offsets, new_consumer, partitions_of, raise_if_broken, start_consumer
from eventfold.observability import REBUILD_PROGRESS
from eventfold.projection import Change, Doc, Handler, Projection
from eventfold.settings import Settings
from projector import store
from projector.apply import DocCache, apply_rebuilding
from projector.batch import decode
from projector.generations import offsets_key, tables_of
from projector.reading import capture_ends, take_below
from projector.tables import projection_failures, projection_offsets, projection_status
from schemas.base import Event
from schemas.envelope import EnvelopeMeta

log = structlog.get_logger("eventfold.rebuild")

_SMALL_LAG = 2000  # events left for the handover, while the live projector is paused
_ROUNDS = 3
_BUSY_S = 30.0  # a generation's status row touched this recently belongs to a running rebuild


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    generation: int
    phase: str  # "catch-up <n>" or "handover"
    done: int
    total: int
    rate: float  # events per second since the start
    eta_s: float | None

    @property
    def ratio(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


Progress = Callable[[RebuildProgress], None]


@dataclass(frozen=True, slots=True)
class RebuildResult:
    generation: int
    records: int
    rounds: int
    seconds: float
    switch_seconds: float  # how long the live projector was paused


def generation_projection(projection: Projection, generation: int) -> Projection:
    """The projection writing into one generation's tables, under its own name.

    Handlers return rows for the declared (generation-agnostic) child tables;
    a wrapper points those rows at the generation's tables instead.
    """
    tables = tables_of(projection, generation)
    by_name = {orig.name: clone for orig, clone in zip(projection.tables, tables, strict=True)}
    return dataclasses.replace(
        projection,
        name=offsets_key(projection.name, generation),
        doc_table=tables[0],
        child_tables=tuple(tables[1:]),
        handlers={t: _remapped(h, by_name) for t, h in projection.handlers.items()},
    )


def _remapped(handler: Handler, tables: Mapping[str, Table]) -> Handler:
    def remapped(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
        change = handler(doc, env, event)
        if not change.appends:
            return change
        return Change(change.doc, [(tables.get(t.name, t), row) for t, row in change.appends])

    return remapped


def old_name(table: str, generation: int) -> str:
    return f"{table}__old_g{generation}"


async def rebuild_projection(
    settings: Settings, projection: Projection, engine: AsyncEngine, progress: Progress | None = None
) -> RebuildResult:
    """Build the next generation beside the live one, then swap it in; returns what it did."""
    started = time.monotonic()
    await store.ensure_status(engine, projection)
    current = await stored_generation(engine, projection.name)
    g = current + 1
    clone = generation_projection(projection, g)
    await prepare(engine, projection, clone, current, lease_s=settings.projector.projector_replay_lease_s)
    topic = projection.topic(settings.kafka)
    reporter = _Reporter(engine, projection.name, g, progress, started)
    consumer = new_consumer(settings.kafka, group_id=None)
    await start_consumer(consumer)
    swapped = False
    prior_state: str | None = None
    try:
        cache = DocCache()  # the generation's tables are new and we are their only writer
        batch_max = settings.projector.projector_replay_batch_max
        rounds = 0
        while True:
            rounds += 1
            start = await store.load_offsets(engine, clone.name, [topic])
            await _catch_up(consumer, topic, clone, engine, cache, start, None, batch_max, reporter, rounds)
            lag = await _lag(engine, projection.name, clone.name, topic)
            if lag < _SMALL_LAG or rounds >= _ROUNDS:
                break
        switch_started = time.monotonic()
        prior_state = await claim(engine, projection.name, store.SWITCHING)
        frozen = await store.load_offsets(engine, projection.name, [topic])
        start = await store.load_offsets(engine, clone.name, [topic])
        reporter.phase = "handover"
        await _catch_up(consumer, topic, clone, engine, cache, start, frozen, batch_max, reporter, rounds)
        await swap(engine, projection, clone, current, g, claimed=store.SWITCHING)
        swapped = True
        switch_seconds = time.monotonic() - switch_started
    except BaseException:
        await abandon(engine, projection, clone, prior_state, claimed=store.SWITCHING)
        raise
    finally:
        await consumer.stop()
        if not swapped:
            REBUILD_PROGRESS.labels(projection.name).set(0)
    REBUILD_PROGRESS.labels(projection.name).set(1)
    await after_swap(settings, projection, engine, current)
    result = RebuildResult(g, reporter.done, rounds, time.monotonic() - started, switch_seconds)
    log.info("rebuild_done", projection=projection.name, **dataclasses.asdict(result))
    return result


async def after_swap(settings: Settings, projection: Projection, engine: AsyncEngine, current: int) -> None:
    """Drop the old generation and tell the consumer group where the projection now is.

    Neither can undo the swap, so neither fails it. The group offsets are for
    lag tools only (the stored offsets are the truth); while the group has
    members Kafka refuses them from outside, and the live runtime commits the
    stored offsets itself when it resumes.
    """
    try:
        await _drop(engine, [old_name(t.name, current) for t in projection.tables])
    except Exception as exc:  # the next rebuild drops them
        log.warning("rebuild_drop_old_failed", projection=projection.name, error=repr(exc))
    topic = projection.topic(settings.kafka)
    group = projection.group_id(settings.kafka)
    try:
        stored = await store.load_offsets(engine, projection.name, [topic])
        await commit_group_offsets(settings.kafka, group, stored, timeout_s=10.0)
    except Exception as exc:
        log.info(
            "group_offsets_left_to_live_projector", projection=projection.name, group=group, reason=repr(exc)
        )


async def stored_generation(engine: AsyncEngine, projection: str) -> int:
    c = projection_status.c
    async with engine.connect() as conn:
        found = (await conn.execute(select(c.generation).where(c.projection == projection))).scalar()
    return int(found or 1)


async def prepare(
    engine: AsyncEngine, projection: Projection, clone: Projection, current: int, *, lease_s: float
) -> None:
    """Refuse a second rebuild or replay; clear leftovers of a failed one; create the new tables.

    A `rebuilding` claim not renewed for `lease_s` was left by a replay that
    died (a running one renews it): its tables were never touched, so the
    projection is simply live again.
    """
    s = projection_status.c
    async with engine.begin() as conn:
        live, claimed_at = (
            await conn.execute(select(s.state, s.updated_at).where(s.projection == projection.name))
        ).one()
        touched = (
            await conn.execute(select(s.updated_at).where(s.projection == clone.name))
        ).scalar_one_or_none()
        if touched is not None and time.time() - touched < min(_BUSY_S, lease_s):
            raise RuntimeError(f"a rebuild of {projection.name} is already running")
        if live == store.SWITCHING:
            # A rebuild died during its handover (the swap commits `live` with
            # the renames, so it did not swap): let the live projector go on.
            await conn.execute(
                update(projection_status).where(s.projection == projection.name).values(state=store.LIVE)
            )
        elif live == store.REBUILDING and time.time() - claimed_at >= lease_s:
            await conn.execute(
                update(projection_status).where(s.projection == projection.name).values(state=store.LIVE)
            )
        elif live not in (store.LIVE, store.FAILED):
            raise RuntimeError(f"projection {projection.name} is {live}; cannot rebuild it now")
        await _forget(conn, clone.name)
    leftovers = [t.name for t in clone.tables]
    leftovers += [old_name(t.name, k) for t in projection.tables for k in (current - 1, current)]
    await _drop(engine, leftovers)
    async with engine.begin() as conn:
        await conn.run_sync(_create_tables, clone.tables)
        await conn.execute(
            insert(projection_status).values(
                projection=clone.name,
                state=store.REBUILDING,
                version=projection.version,
                events_applied=0,
                updated_at=time.time(),
            )
        )
        await conn.execute(
            update(projection_status)
            .where(s.projection == projection.name)
            .values(rebuild_progress=0.0, rebuild_detail=f"building generation {clone.name}")
        )


def _create_tables(sync: Any, tables: list[Table]) -> None:
    for table in tables:
        table.create(sync)


async def _forget(conn: AsyncConnection, name: str) -> None:
    for table in (projection_status, projection_offsets, projection_failures):
        await conn.execute(delete(table).where(table.c.projection == name))


async def _drop(engine: AsyncEngine, names: list[str]) -> None:
    async with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer.quote
        for name in names:
            await conn.execute(text(f"DROP TABLE IF EXISTS {quote(name)}"))


async def _lag(engine: AsyncEngine, live: str, clone: str, topic: str) -> int:
    ahead = await store.load_offsets(engine, live, [topic])
    mine = await store.load_offsets(engine, clone, [topic])
    return sum(max(o - mine.get(k, 0), 0) for k, o in ahead.items())


async def claim(engine: AsyncEngine, name: str, to: str) -> str:
    """Stop the live runtime between two batches (it applies only while live or failed); the prior state."""
    async with engine.begin() as conn:
        state = await store.lock_state(conn, name)
        if state not in (store.LIVE, store.FAILED):
            raise RuntimeError(f"projection {name} became {state} during the rebuild")
        await conn.execute(
            update(projection_status)
            .where(projection_status.c.projection == name)
            .values(state=to, updated_at=time.time())
        )
    return state


async def _catch_up(
    consumer: AIOKafkaConsumer,
    topic: str,
    clone: Projection,
    engine: AsyncEngine,
    cache: DocCache,
    start: Mapping[tuple[str, int], int],
    stop: Mapping[tuple[str, int], int] | None,
    batch_max: int,
    reporter: _Reporter,
    round_: int,
) -> None:
    if reporter.phase != "handover":
        reporter.phase = f"catch-up {round_}"
    async for records, remaining in _read_range(consumer, topic, start, stop, batch_max):
        items = [decode(clone, r) for r in records]
        # No dead letters: the live generation dead-lettered these records already.
        await apply_rebuilding(engine, clone, items, cache=cache)
        await reporter.advance(len(records), remaining)


async def _read_range(
    consumer: AIOKafkaConsumer,
    topic: str,
    start: Mapping[tuple[str, int], int],
    stop: Mapping[tuple[str, int], int] | None,
    batch_max: int,
) -> AsyncIterator[tuple[list[Any], int]]:
    """Yield (records, records left) from `start` up to `stop`, or to the first high-watermarks seen."""
    parts = [tp.partition for tp in await partitions_of(consumer, topic)]
    if not parts:
        raise RuntimeError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in parts]
    position = {tp: start.get((topic, tp.partition), 0) for tp in tps}
    ends: dict[TopicPartition, int] = {}
    if stop is not None:
        ends = {tp: stop.get((topic, tp.partition), 0) for tp in tps}
        if all(position[tp] >= ends[tp] for tp in tps):
            return
    consumer.assign(tps)
    consumer.resume(*tps)
    for tp in tps:
        consumer.seek(tp, position[tp])
    try:
        while True:
            raise_if_broken(consumer, "rebuild")  # else a dead fetch routine reads nothing, forever
            batch = await consumer.getmany(timeout_ms=200, max_records=batch_max)
            if stop is None:
                capture_ends(consumer, tps, ends)
            records = take_below(batch, ends, position)
            known = len(ends) == len(tps)
            left = sum(max(ends[tp] - position[tp], 0) for tp in ends)
            if records:
                yield records, left
            if known and left == 0:
                return
    finally:
        consumer.pause(*tps)


async def swap(
    engine: AsyncEngine, projection: Projection, clone: Projection, current: int, g: int, *, claimed: str
) -> None:
    """The rename swap and the bookkeeping move, in one transaction, if the claim still holds."""
    s, o, f = projection_status.c, projection_offsets.c, projection_failures.c
    async with engine.begin() as conn:
        state = await store.lock_state(conn, projection.name)
        if state != claimed:
            raise RuntimeError(f"projection {projection.name} became {state} before the swap")
        quote = conn.dialect.identifier_preparer.quote
        # A table the new version added has no live generation to rename away.
        existing = await conn.run_sync(_existing, [t.name for t in projection.tables])
        for live, built in zip(projection.tables, clone.tables, strict=True):
            if live.name in existing:
                await conn.execute(
                    text(f"ALTER TABLE {quote(live.name)} RENAME TO {quote(old_name(live.name, current))}")
                )
            await conn.execute(text(f"ALTER TABLE {quote(built.name)} RENAME TO {quote(live.name)}"))
        # The new generation read at least as far as the frozen live offsets,
        # so its own offsets describe the renamed tables exactly.
        await conn.execute(delete(projection_offsets).where(o.projection == projection.name))
        await conn.execute(
            update(projection_offsets).where(o.projection == clone.name).values(projection=projection.name)
        )
        await conn.execute(delete(projection_failures).where(f.projection == projection.name))
        await conn.execute(
            update(projection_failures).where(f.projection == clone.name).values(projection=projection.name)
        )
        built_status = (
            await conn.execute(select(s.events_applied, s.last_event_at).where(s.projection == clone.name))
        ).one()
        await conn.execute(
            update(projection_status)
            .where(s.projection == projection.name)
            .values(
                state=store.LIVE,
                generation=g,
                version=projection.version,
                events_applied=built_status.events_applied,
                last_event_at=built_status.last_event_at,
                rebuild_progress=None,
                rebuild_detail=None,
                detail=None,
                updated_at=time.time(),
            )
        )
        await conn.execute(delete(projection_status).where(s.projection == clone.name))


def _existing(sync: Any, names: list[str]) -> set[str]:
    found = inspect(sync)
    return {name for name in names if found.has_table(name)}


async def abandon(
    engine: AsyncEngine, projection: Projection, clone: Projection, prior: str | None, *, claimed: str
) -> None:
    """Undo a rebuild or replay that did not swap: the live generation never noticed it."""
    s = projection_status.c
    try:
        async with engine.begin() as conn:
            await _forget(conn, clone.name)
            values: dict[str, Any] = {"rebuild_progress": None, "rebuild_detail": None}
            await conn.execute(
                update(projection_status).where(s.projection == projection.name).values(**values)
            )
            if prior is not None:
                await conn.execute(
                    update(projection_status)
                    .where(s.projection == projection.name, s.state == claimed)
                    .values(state=prior, updated_at=time.time())
                )
        await _drop(engine, [t.name for t in clone.tables])
    except Exception as exc:
        log.warning("rebuild_cleanup_failed", projection=projection.name, error=repr(exc))


class _Reporter:
    """Progress to the callback, the gauge and (at most once a second) the status row."""

    def __init__(
        self, engine: AsyncEngine, name: str, generation: int, callback: Progress | None, started: float
    ) -> None:
        self.engine, self.name, self.generation = engine, name, generation
        self.callback = callback
        self.started = started
        self.done = 0
        self.phase = "catch-up 1"
        self.saved_at = 0.0

    async def advance(self, records: int, left: int) -> None:
        self.done += records
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        report = RebuildProgress(
            self.generation,
            self.phase,
            self.done,
            self.done + left,
            rate,
            left / rate if rate > 0 else None,
        )
        REBUILD_PROGRESS.labels(self.name).set(report.ratio)
        if self.callback is not None:
            self.callback(report)
        now = time.monotonic()
        if now - self.saved_at >= 1.0:
            self.saved_at = now
            eta = f", ETA {report.eta_s:,.0f} s" if report.eta_s is not None else ""
            detail = f"generation {self.generation}: {self.phase}, {rate:,.0f} ev/s{eta}"
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(projection_status)
                    .where(projection_status.c.projection == self.name)
                    .values(rebuild_progress=report.ratio, rebuild_detail=detail)
                )


async def rebuild_if_outdated(
    settings: Settings, projection: Projection, engine: AsyncEngine
) -> RebuildResult | None:
    """Rebuild when the declared version differs from the stored one (a deploy changed the projection).

    The old generation keeps serving meanwhile; the swap stores the new version.
    A `failed` projection is rebuilt too (a new version is how a fix ships);
    one that a replay or another rebuild holds is refused by `prepare`, for
    the caller to try again.
    """
    c = projection_status.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(c.state, c.version).where(c.projection == projection.name))
        ).one_or_none()
    if row is None or row.version == projection.version:
        return None
    log.info(
        "rebuild_for_new_version", projection=projection.name, stored=row.version, declared=projection.version
    )
    return await rebuild_projection(settings, projection, engine)
