"""Rebuild a projection from offset 0, and refill the write side's stream heads.

A projection replay changes nothing until everything it needs answered: the
read store (the projection's state) and Kafka (the topic's partition ends).
It then builds the projection's next generation of tables (`<table>__g2`,
offsets under `<projection>@g2`, projector/generations.py) from offset 0 up to
the fetch high-watermarks, through the same `apply_batch` as the live path
(`apply_rebuilding`), while the live tables keep serving what they served.
The live runtime is paused meanwhile by the `rebuilding` claim on the status
row, which the replay renews; at the end one transaction renames the new
tables into place and sets `live` (projector/rebuild.py `swap`), and the live
runtime resumes from the offsets the replay stored. A replay that fails drops
its tables and restores the state; one that dies stops renewing its claim,
and the live runtime takes the projection back.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from command_api.tables import streams
from eventfold import jsonutil
from eventfold.aggregate import Aggregate
from eventfold.broker import die_with_parent
from eventfold.kafka import fetch_highwaters, new_consumer, partitions_of, raise_if_broken, start_consumer
from eventfold.projection import Projection
from eventfold.settings import KafkaSettings, Settings
from projector import rebuild, store
from projector.apply import DeadLetter, DocCache, apply_rebuilding
from projector.batch import Decoded, Failure, decode
from projector.reading import capture_ends, take_below
from schemas.mapper import PoisonRecord, decode_event

Progress = Callable[[int, int], None]  # (records read, records to read)


class ReplayRefused(RuntimeError):
    """The replay did not start; nothing was changed."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    records: int
    applied: int
    failures: int
    seconds: float


async def replay_projection(
    settings: Settings,
    projection: Projection,
    engine: AsyncEngine,
    *,
    progress: Progress | None = None,
    dead_letter: DeadLetter | None = None,
    workers: int = 1,
) -> ReplayResult:
    """Rebuild one projection; leaves its tables as live consumption would.

    With `workers` > 1 the partitions are shared among that many processes
    (`replay_worker`), each applying its own partitions' records in order:
    a stream lives on one partition, so no two workers write one document.
    A `dead_letter` callback lives in this process, so it keeps one worker.
    """
    started = time.monotonic()
    lease = settings.projector.projector_replay_lease_s
    ends = await check_can_start(settings, projection, engine)
    await store.ensure_status(engine, projection)
    current = await rebuild.stored_generation(engine, projection.name)
    clone = rebuild.generation_projection(projection, current + 1)
    await rebuild.prepare(engine, projection, clone, current, lease_s=lease)
    prior: str | None = None
    heartbeat: asyncio.Task[None] | None = None
    try:
        prior = await rebuild.claim(engine, projection.name, store.REBUILDING)
        heartbeat = asyncio.create_task(_renew(engine, projection.name, clone.name, lease))
        if workers > 1 and dead_letter is None:
            read, applied, failures = await _replay_in_processes(
                settings, projection, current + 1, engine, workers, ends, progress
            )
        else:
            share = await replay_partitions(
                settings, clone, engine, None, progress=progress, dead_letter=dead_letter
            )
            read, applied, failures = share.records, share.applied, share.failures
        await _stop(heartbeat)
        await rebuild.swap(engine, projection, clone, current, current + 1, claimed=store.REBUILDING)
    except BaseException:
        if heartbeat is not None:
            await _stop(heartbeat)
        await rebuild.abandon(engine, projection, clone, prior, claimed=store.REBUILDING)
        raise
    await rebuild.after_swap(settings, projection, engine, current)
    return ReplayResult(read, applied, failures, time.monotonic() - started)


async def check_can_start(settings: Settings, projection: Projection, engine: AsyncEngine) -> dict[int, int]:
    """Everything a replay needs answered, asked before it changes anything; each partition's end.

    Raises ReplayRefused (a one-line reason) when the read store or Kafka
    does not answer or the topic has no partitions.
    """
    try:
        # Whether another replay or rebuild holds the projection is decided
        # under the status row's lock when claiming (rebuild.prepare).
        await store.read_state(engine, projection.name)
    except (SQLAlchemyError, OSError) as exc:
        raise ReplayRefused(f"cannot read the read store: {exc}") from exc
    topic = projection.topic(settings.kafka)
    kafka = settings.kafka.kafka_bootstrap
    try:
        found = await fetch_highwaters(settings.kafka, [topic], timeout_s=15.0, require_all=True)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise ReplayRefused(f"cannot read topic {topic} from Kafka at {kafka}: {reason}") from exc
    if not found:
        raise ReplayRefused(f"topic {topic} does not exist on Kafka at {kafka}")
    return {p: o for (_, p), o in found.items()}


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel and await: a renewal cut off is rolled back before anything else writes."""
    task.cancel()
    await asyncio.wait([task])  # its outcome is of no interest; our own cancellation still propagates


async def _renew(engine: AsyncEngine, name: str, own: str, lease_s: float) -> None:
    """Keep the replay's claim fresh; a missed renewal is retried, the lease allows several."""
    while True:
        await asyncio.sleep(lease_s / 4)
        with contextlib.suppress(SQLAlchemyError, OSError):
            await store.renew_claim(engine, name, store.REBUILDING, own)


@dataclass(frozen=True, slots=True)
class Share:
    """What one replayer applied: counts, and its newest event time."""

    records: int
    applied: int
    failures: int
    last_event_at: datetime | None


async def replay_partitions(
    settings: Settings,
    projection: Projection,
    engine: AsyncEngine,
    partitions: list[int] | None,
    *,
    progress: Progress | None = None,
    dead_letter: DeadLetter | None = None,
) -> Share:
    """Apply `partitions` (None: all) from offset 0 to their ends into `projection` (a new generation)."""
    topic = projection.topic(settings.kafka)
    consumer = _consumer(settings.kafka)
    await start_consumer(consumer)
    read = applied = failures = 0
    last: datetime | None = None
    cache = DocCache()  # the generation's tables are new and we are their only writer
    shared = partitions is not None  # a worker: other processes write other partitions
    try:
        batches = _read_to_end(consumer, topic, settings.projector.projector_replay_batch_max, partitions)
        async for items, total in decoded_ahead(projection, batches):
            write = asyncio.ensure_future(
                apply_rebuilding(
                    engine, projection, items, cache=cache, dead_letter=dead_letter, shared=shared
                )
            )
            try:
                folded = await asyncio.shield(write)
            except asyncio.CancelledError:
                # Interrupted (Ctrl-C): let the transaction end before the
                # replay is undone; cut off midway, it could keep the
                # database locked (SQLite) past the undo.
                with contextlib.suppress(Exception):
                    await write
                raise
            read += len(items)
            applied += folded.applied
            failures += len(folded.failures)
            at = folded.last_event_at
            last = at if last is None or (at is not None and at > last) else last
            if progress is not None:
                progress(read, total)
    finally:
        await consumer.stop()
    return Share(read, applied, failures, last)


def replay_workers(settings: Settings, wanted: int | None = None) -> int:
    """How many processes a replay uses: `wanted`, else the setting, else one per core (max 4)."""
    from eventfold.db import writer_processes

    return writer_processes(settings.db.read_db_url, wanted or settings.projector.projector_replay_workers)


def replay_worker(
    settings: Settings, projection: Projection, generation: int, partitions: list[int]
) -> Share:
    """A worker process's part of a parallel replay (runs in a spawned process).

    It gets the declared projection (its handlers pickle by name) and builds
    the generation's projection itself.
    """
    from eventfold.db import create_engine
    from eventfold.runner import run_fast

    clone = rebuild.generation_projection(projection, generation)

    async def main() -> Share:
        engine = create_engine(settings.db.read_db_url, pool_size=2)
        try:
            return await replay_partitions(settings, clone, engine, partitions)
        finally:
            await engine.dispose()

    return run_fast(main())


async def _replay_in_processes(
    settings: Settings,
    projection: Projection,
    generation: int,
    engine: AsyncEngine,
    workers: int,
    ends: dict[int, int],
    progress: Progress | None,
) -> tuple[int, int, int]:
    """Share the partitions among worker processes; report progress from the stored offsets.

    Decoding and folding are CPU-bound Python, so one process uses one core
    however the database keeps up; several use the machine.
    """
    name = rebuild.generation_projection(projection, generation).name
    topic = projection.topic(settings.kafka)
    parts = sorted(ends)
    groups = [g for g in (parts[i :: min(workers, len(parts))] for i in range(workers)) if g]
    total = sum(ends.values())
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")  # never fork a process holding an event loop
    # Workers die with this process: a killed replay must not leave writers
    # behind in tables the next replay drops and recreates.
    pool = ProcessPoolExecutor(len(groups), mp_context=spawn, initializer=die_with_parent)
    running: list[asyncio.Future[Share]] = []
    try:
        running += [
            loop.run_in_executor(pool, replay_worker, settings, projection, generation, g) for g in groups
        ]
        pending: set[asyncio.Future[Share]] = set(running)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if progress is not None:
                done = await store.stored_offsets_total(engine, name, topic)
                progress(min(done, total), total)
            for f in running:
                # A worker's error ends the replay now, not when the others finish.
                error = f.exception() if f.done() else None
                if error is not None:
                    raise error
        shares = [f.result() for f in running]
    except BaseException:
        # The replay is being abandoned: its workers must not go on writing
        # tables that are about to be dropped.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for f in running:
            # Their BrokenProcessPool is the termination above, not news.
            f.add_done_callback(_retrieved)
        raise
    pool.shutdown()
    last = max((s.last_event_at for s in shares if s.last_event_at is not None), default=None)
    applied = sum(s.applied for s in shares)
    async with engine.begin() as conn:
        await store.count_applied(conn, name, applied, last, store.REBUILDING)
    return sum(s.records for s in shares), applied, sum(s.failures for s in shares)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def decoded_ahead(
    projection: Projection, batches: AsyncIterator[tuple[list[Any], int]]
) -> AsyncIterator[tuple[list[Decoded | Failure], int]]:
    """Fetch and decode the next batch while the current one is being written.

    Decoding is the projector's main CPU cost and the write mostly waits on
    the database, so a one-batch lookahead task keeps both busy.
    """
    queue: asyncio.Queue[tuple[list[Decoded | Failure], int] | None] = asyncio.Queue(maxsize=1)

    async def read() -> None:
        async for records, total in batches:
            await queue.put(([decode(projection, r) for r in records], total))
        await queue.put(None)

    reader = asyncio.create_task(read())
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        await reader  # re-raise what ended it, if anything
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _consumer(kafka: KafkaSettings) -> AIOKafkaConsumer:
    return new_consumer(kafka, group_id=None)


async def _read_to_end(
    consumer: AIOKafkaConsumer, topic: str, batch_max: int, partitions: list[int] | None = None
) -> Any:
    """Yield (records, total) batches from offset 0 to the high-watermarks seen first.

    The end of each partition is the high-watermark of its first fetch
    response, not ListOffsets, which some brokers answer wrongly; records that
    arrive later are left to the live projector.
    """
    known = [tp.partition for tp in await partitions_of(consumer, topic)]
    parts = sorted(p for p in known if partitions is None or p in partitions)
    if not parts:
        raise RuntimeError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    ends: dict[TopicPartition, int] = {}
    position = {tp: 0 for tp in tps}
    while True:
        raise_if_broken(consumer, "replay")  # else a dead fetch routine reads nothing, forever
        batch = await consumer.getmany(timeout_ms=200, max_records=batch_max)
        got = sum(map(len, batch.values()))
        while 0 < got < batch_max:
            # Top the batch up with what has been fetched meanwhile: fewer,
            # larger transactions (a fetch brings ~1 MB per partition).
            more = await consumer.getmany(timeout_ms=0, max_records=batch_max - got)
            if not more:
                break
            for tp, msgs in more.items():
                batch.setdefault(tp, []).extend(msgs)
            got += sum(map(len, more.values()))
        capture_ends(consumer, tps, ends)
        records = take_below(batch, ends, position)
        total = sum(ends.values())
        done = len(ends) == len(tps) and all(position[tp] >= ends[tp] for tp in tps)
        if records:
            yield records, total
        if done:
            consumer.pause(*tps)
            return


async def replay_write_side(
    settings: Settings, aggregate: Aggregate[Any], engine: AsyncEngine, *, progress: Progress | None = None
) -> int:
    """Refill `streams` (version and state) by folding the topic with `evolve`.

    Versions at or below what a stream has reached are skipped (first
    occurrence wins, as the publisher may repeat a batch); a stream already
    stored at a later version is left alone. Returns the streams written.
    """
    contract = aggregate.contract
    states: dict[str, tuple[int, Any]] = {}
    consumer = _consumer(settings.kafka)
    await start_consumer(consumer)
    read = 0
    try:
        async for records, total in _read_to_end(
            consumer, settings.kafka.topic(aggregate.stream_type), settings.projector.projector_batch_max
        ):
            for r in records:
                try:
                    env, event = decode_event(contract, r.value)
                except (PoisonRecord, LookupError, ValueError):
                    continue
                version, state = states.get(env.stream_id, (0, aggregate.initial))
                if env.version == version + 1:
                    states[env.stream_id] = (env.version, aggregate.evolve(state, event))
            read += len(records)
            if progress is not None:
                progress(read, total)
    finally:
        await consumer.stop()
    return await _write_heads(engine, aggregate.stream_type, states)


async def _write_heads(engine: AsyncEngine, stream_type: str, states: dict[str, tuple[int, Any]]) -> int:
    now = time.time()
    rows = [
        {
            "stream_type": stream_type,
            "stream_id": sid,
            "version": version,
            "state": jsonutil.dumps(state.model_dump(mode="json")).decode(),
            "updated_at": now,
        }
        for sid, (version, state) in sorted(states.items())
    ]
    if not rows:
        return 0
    async with engine.begin() as conn:
        stmt = store.upsert(
            conn, streams, ["stream_type", "stream_id"], ["version", "state", "updated_at"], newer="version"
        )
        for start in range(0, len(rows), 1000):
            await conn.execute(stmt, rows[start : start + 1000])
    return len(rows)
