"""The live projector: one consumer group per projection, batches into the read store.

The stored offsets are the truth. On every assignment the consumer seeks to
them; each batch commits its rows and the next offsets in one transaction;
Kafka group offsets are committed afterwards, in the background, only for lag
tools: after each batch and whenever the runtime seeks to the stored offsets
(assignment, resume after a replay), so the group follows the stored offsets
even when a replay moved them. While a replay rebuilds the projection, the
runtime pauses its partitions and, when the projection is live again (or the
replay stopped renewing its claim), seeks back to the stored offsets.

Before consuming, the runtime creates the projection's tables if none exist
(projector/live_tables.py) and, when the declared version differs from the
stored one, rebuilds the projection blue/green in the background; tables an
earlier version built that the new handlers cannot write are left serving
until that rebuild swaps the new ones in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.kafka import create_topics, dlq_topic, fetch, new_consumer, new_producer
from eventfold.observability import EVENTS_APPLIED, PARTITION_LAG, PROJECTOR_BATCH, PROJECTOR_BATCH_SECONDS
from eventfold.projection import Projection
from eventfold.settings import Settings
from eventfold.tasks import cancel_and_wait, run_until_stopped
from projector import store
from projector.apply import BatchResult, apply_batch, next_offsets
from projector.batch import Decoded, Failure, contiguous, decode
from projector.deadletter import DeadLetterSink
from projector.health import health_port
from projector.live_tables import LiveTables, ensure_live_tables
from projector.metrics import Counters

log = logging.getLogger("eventfold.projector")

_LIVE_STATES = frozenset({store.LIVE, store.FAILED})
_FAILED_AFTER = 5  # consecutive failing batches before the status says `failed`
_RECHECK_S = 10.0  # how often tables that do not fit the declaration are looked at again


async def seek_to_stored(
    consumer: AIOKafkaConsumer, engine: AsyncEngine, projection: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """Seek each partition to its stored next offset (0 if none); returns where."""
    if not tps:
        return {}
    stored = await store.load_offsets(engine, projection, {tp.topic for tp in tps})
    out = {tp: stored.get((tp.topic, tp.partition), 0) for tp in tps}
    for tp, offset in out.items():
        consumer.seek(tp, offset)
    return out


class GroupCommitter:
    """Commits group offsets in the background, never blocking or failing a batch.

    One commit is in flight at a time; offers made meanwhile are merged (the
    latest offer of a partition wins, since it is where the stored offsets
    are) and sent next. A commit that fails is dropped: the next batch or
    seek offers newer offsets anyway.
    """

    def __init__(self, consumer: AIOKafkaConsumer, projection: str) -> None:
        self.consumer = consumer
        self.projection = projection
        self.pending: dict[TopicPartition, int] = {}
        self.task: asyncio.Task[None] | None = None

    def offer(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.pending.update(offsets)
        if self.pending and (self.task is None or self.task.done()):
            self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self.pending:
            assigned = self.consumer.assignment()
            commit = {tp: OffsetAndMetadata(o, "") for tp, o in self.pending.items() if tp in assigned}
            self.pending.clear()
            if not commit:
                return
            try:
                await self.consumer.commit(commit)
            except Exception as exc:
                log.debug("projection=%s group offset commit skipped: %r", self.projection, exc)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let the commit in flight (and what is pending) go out before the consumer stops."""
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
            await cancel_and_wait([self.task])


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ProjectorRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Nothing to save: every applied batch already stored its offsets.
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        rt = self.runtime
        # The loop may be fetching while this runs; holding the batch lock and
        # bumping the generation makes it drop a batch fetched around this seek
        # (and seek again) rather than apply records twice or skip some.
        async with rt.batch_lock:
            rt.generation += 1
            try:
                positions = await seek_to_stored(rt.consumer, rt.engine, rt.projection.name, list(assigned))
                rt.expect(positions)
                rt.committer.offer(positions)
            except Exception as exc:
                log.warning("cannot load stored offsets on assignment: %r", exc)
                rt.needs_seek = True  # the loop applies nothing until a seek succeeds
            if rt.paused:
                rt.consumer.pause(*assigned)
        log.info(
            "projection=%s assigned=%s",
            rt.projection.name,
            sorted((tp.topic, tp.partition) for tp in assigned),
        )


class ProjectorRuntime:
    def __init__(self, settings: Settings, projection: Projection, engine: AsyncEngine) -> None:
        self.settings = settings
        self.projection = projection
        self.engine = engine
        self.topic = projection.topic(settings.kafka)
        cfg = settings.projector
        session = cfg.projector_session_timeout_ms
        self.consumer = new_consumer(
            settings.kafka,
            group_id=projection.group_id(settings.kafka),
            session_timeout_ms=session,
            heartbeat_interval_ms=min(cfg.projector_heartbeat_ms, session // 3),
            max_poll_interval_ms=max(60_000, session),
            rebalance_timeout_ms=session,
            # A JoinGroup answer may wait a whole rebalance, so give it longer.
            request_timeout_ms=max(settings.kafka.request_timeout_ms, session + 5_000),
        )
        self.producer = new_producer(settings.kafka)
        self.committer = GroupCommitter(self.consumer, projection.name)
        self.counters = Counters()
        self.paused = False
        self.batch_lock = asyncio.Lock()
        self.generation = 0
        self.needs_seek = False
        # Per partition: the offset the next record must have, and whether it
        # was set by a seek (a fetch may then legitimately start further on).
        self.expected: dict[TopicPartition, tuple[int, bool]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first."""
        live = await self._prepare(stop)
        if live is None:
            return
        rebuild = asyncio.create_task(self._rebuild_while_outdated(stop))
        try:
            if await self._until_tables_fit(stop, live, rebuild):
                await self._run(stop)
        finally:
            rebuild.cancel()
            with contextlib.suppress(BaseException):
                await rebuild

    async def _rebuild_while_outdated(self, stop: asyncio.Event) -> None:
        """A new declared version: build the next generation while this one serves.

        Retried until the stored version is the declared one: a rebuild that
        failed, or found the projection busy (another replica rebuilding, a
        replay), is tried again, and one that another replica finished ends it.
        """
        from projector.rebuild import rebuild_if_outdated

        delay = 1.0
        while not stop.is_set():
            try:
                await rebuild_if_outdated(self.settings, self.projection, self.engine)
                return
            except Exception as exc:
                log.warning(
                    "projection=%s rebuild for a new version failed (retrying in %.0f s): %r",
                    self.projection.name,
                    delay,
                    exc,
                )
            await _sleep_unless(stop, delay)
            delay = min(delay * 2, 30.0)

    async def _until_tables_fit(
        self, stop: asyncio.Event, live: LiveTables, rebuild: asyncio.Task[None]
    ) -> bool:
        """Wait until the live tables fit the declaration; False if `stop` came first.

        Tables that do not fit were built by an earlier version: they keep
        serving what they hold while the rebuild builds the new version's, and
        this runtime consumes once those are swapped in. Tables that do not
        fit a version already stored cannot be fixed by a rebuild: the status
        says so until someone changes the tables or declares a new version.
        """
        name = self.projection.name
        marked = False
        while not live.fit:
            why = "; ".join(live.misfits)
            if not rebuild.done():
                log.info("projection=%s waits for the rebuild of its new version: %s", name, why)
                await _wait_unless(stop, rebuild)
            else:
                detail = (
                    f"the live tables do not fit the declaration ({why}); "
                    "declare a new version to rebuild them"
                )
                if not marked:
                    log.error("projection=%s: %s", name, detail)
                with contextlib.suppress(Exception):
                    await store.mark_failed(self.engine, name, detail)
                    marked = True
                await _sleep_unless(stop, _RECHECK_S)
            if stop.is_set():
                return False
            with contextlib.suppress(Exception):
                live = await ensure_live_tables(self.engine, self.projection)
        if marked:
            with contextlib.suppress(Exception):
                await store.clear_failed(self.engine, name)
        return True

    async def _run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        try:
            self.consumer.subscribe([self.topic], listener=_SeekOnAssign(self))
            await self.consumer.start()
            try:
                await self._loop(stop)
            finally:
                await self.committer.close()
                await self.consumer.stop()
        finally:
            await self.producer.stop()
            log.info("projection=%s stopped counters=%s", self.projection.name, self.counters)

    async def _loop(self, stop: asyncio.Event) -> None:
        cfg = self.settings.projector
        sink = DeadLetterSink(self.producer)
        failing = 0
        what = f"projection={self.projection.name}"
        # A batch fetched and decoded while the previous one was being written:
        # (generation at fetch, the fetch, decoded records by id).
        ahead: tuple[int, dict[TopicPartition, list[Any]], dict[int, Decoded | Failure]] | None = None
        while not stop.is_set():
            if self.needs_seek and not await self._seek_assigned(stop):
                ahead = None
                continue
            if ahead is None:
                generation = self.generation
                poll, limit = cfg.projector_poll_ms, cfg.projector_batch_max
                fetched = await fetch(self.consumer, timeout_ms=poll, max_records=limit, what=what)
                if fetched is None:  # the consumer failed on the way to a broker
                    self.needs_seek = True
                    await _sleep_unless(stop, 0.5)
                    continue
                batch = fetched
                decoded: dict[int, Decoded | Failure] = {}
            else:
                generation, batch, decoded = ahead
                ahead = None
            if self.paused:
                await self._maybe_resume(stop)
                continue
            records = self._contiguous(batch)
            if records is None:
                self.needs_seek = True
                continue
            if not records:
                continue
            items = [decoded.get(id(r)) or decode(self.projection, r) for r in records]
            started = time.perf_counter()
            writing = asyncio.create_task(self._apply(items, generation, sink))
            # Decoding is CPU and the write mostly waits on the database: fetch
            # what is already buffered and decode it meanwhile. It goes through
            # the same contiguity and generation checks when its turn comes.
            next_generation = self.generation
            try:
                prefetched = await fetch(
                    self.consumer, timeout_ms=0, max_records=cfg.projector_batch_max, what=what
                )
            except BaseException:
                # Never leave a write running unowned; a cancelled transaction
                # commits nothing, and its records are read again after a seek.
                writing.cancel()
                raise
            if prefetched is None:  # finish this batch, then read on from the stored offsets
                self.needs_seek = True
            upcoming = prefetched or {}
            upcoming_decoded = {id(r): decode(self.projection, r) for msgs in upcoming.values() for r in msgs}
            try:
                result = await writing
            except Exception as exc:
                failing += 1
                self.counters.errors += 1
                log.exception("projection=%s batch failed (%d in a row)", self.projection.name, failing)
                if failing == _FAILED_AFTER:
                    with contextlib.suppress(Exception):
                        await store.mark_failed(self.engine, self.projection.name, repr(exc))
                self.needs_seek = True
                await _sleep_unless(stop, min(0.2 * failing, 5.0))
                continue
            failing = 0
            if result is None:
                # An assignment moved positions while this batch was fetched:
                # drop it and read again from the stored offsets.
                self.needs_seek = True
                continue
            if not result.allowed:
                self._pause()
                continue
            assert result.folded is not None
            for (topic, partition), offset in next_offsets(items).items():
                self.expected[TopicPartition(topic, partition)] = (offset, False)
            if upcoming:
                ahead = (next_generation, upcoming, upcoming_decoded)
            self.counters.add(result.folded)
            self._observe(items, result.folded.applied, time.perf_counter() - started)
            self.committer.offer({TopicPartition(t, p): o for (t, p), o in next_offsets(items).items()})

    async def _apply(
        self, items: list[Decoded | Failure], generation: int, sink: DeadLetterSink
    ) -> BatchResult | None:
        """Apply one batch under the batch lock; None if an assignment intervened."""
        async with self.batch_lock:
            if generation != self.generation:
                return None
            return await apply_batch(
                self.engine,
                self.projection,
                items,
                next_offsets(items),
                allowed_states=_LIVE_STATES,
                dead_letter=sink,
                state_after=store.LIVE,
            )

    async def _prepare(self, stop: asyncio.Event) -> LiveTables | None:
        """Topics, status row and live tables, retried while Kafka or the database is down (no crash loop)."""
        delay = 0.2
        while not stop.is_set():
            try:
                await create_topics(self.settings.kafka, [self.topic, dlq_topic(self.topic)])
                await store.ensure_status(self.engine, self.projection)
                live = await ensure_live_tables(self.engine, self.projection)
                if live.created:
                    log.info("projection=%s created its tables; reading from offset 0", self.projection.name)
                return live
            except Exception as exc:
                log.warning("projection=%s cannot start yet (retrying): %r", self.projection.name, exc)
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, 5.0)
        return None

    def expect(self, positions: dict[TopicPartition, int]) -> None:
        for tp, offset in positions.items():
            self.expected[tp] = (offset, True)

    def _contiguous(self, batch: dict[TopicPartition, list[Any]]) -> list[Any] | None:
        records = contiguous(batch, self.expected)
        if records is None:
            log.warning("projection=%s: records were skipped; re-reading", self.projection.name)
        return records

    def _observe(self, items: Sequence[Decoded | Failure], applied: int, seconds: float) -> None:
        name = self.projection.name
        if log.isEnabledFor(logging.DEBUG):
            # One line per event, carrying the correlation id of the command behind it.
            for item in items:
                if isinstance(item, Decoded):
                    env = item.envelope
                    log.debug(
                        "event handled",
                        extra={
                            "projection": name,
                            "stream_id": env.stream_id,
                            "version": env.version,
                            "type": env.type,
                            "partition": item.partition,
                            "offset": item.offset,
                            "correlation_id": env.correlation_id,
                            "causation_id": env.causation_id,
                        },
                    )
        EVENTS_APPLIED.labels(name).inc(applied)
        PROJECTOR_BATCH.labels(name).observe(len(items))
        PROJECTOR_BATCH_SECONDS.labels(name).observe(seconds)
        assigned = self.consumer.assignment()
        for (topic, partition), offset in next_offsets(items).items():
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                # Revoked while the batch was written (another member joined):
                # its offsets are stored, and its lag is the new owner's to report.
                continue
            # The fetch high-watermark, not ListOffsets: see query_api/watermarks.py.
            hw = self.consumer.highwater(tp)
            if hw is not None:
                PARTITION_LAG.labels(name, topic, str(partition)).set(max(hw - offset, 0))

    def _pause(self) -> None:
        log.info("projection=%s is rebuilding elsewhere; pausing", self.projection.name)
        self.paused = True
        self.consumer.pause(*self.consumer.assignment())

    async def _maybe_resume(self, stop: asyncio.Event) -> None:
        try:
            state = await store.read_state(self.engine, self.projection.name)
        except Exception as exc:
            log.warning("cannot read projection state: %r", exc)
            state = None
        if state == store.REBUILDING and await self._release_abandoned_claim():
            state = store.LIVE
        if state not in _LIVE_STATES:
            self.consumer.pause(*self.consumer.assignment())
            await _sleep_unless(stop, 0.25)
            return
        if not await self._seek_assigned(stop):
            return
        self.consumer.resume(*self.consumer.assignment())
        self.paused = False
        log.info("projection=%s is live again; resumed at stored offsets", self.projection.name)

    async def _release_abandoned_claim(self) -> bool:
        """A replay renews its claim while it runs; one that stopped renewing died."""
        lease = self.settings.projector.projector_replay_lease_s
        try:
            released = await store.release_stale_claim(
                self.engine, self.projection.name, store.REBUILDING, lease
            )
        except Exception as exc:
            log.warning("cannot check the replay's claim: %r", exc)
            return False
        if released:
            log.warning(
                "projection=%s: the replay stopped renewing its claim; live again", self.projection.name
            )
        return released

    async def _seek_assigned(self, stop: asyncio.Event) -> bool:
        """Every assigned partition back to its stored offset; False (after a pause) if not."""
        async with self.batch_lock:
            try:
                assigned = list(self.consumer.assignment())
                positions = await seek_to_stored(self.consumer, self.engine, self.projection.name, assigned)
                self.expect(positions)
                self.committer.offer(positions)
            except Exception as exc:
                log.warning("cannot load stored offsets: %r", exc)
            else:
                self.generation += 1
                self.needs_seek = False
                return True
        await _sleep_unless(stop, 0.5)
        return False


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_unless(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Until `task` ends or `stop` is set, whichever comes first."""
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait([stopped])


# How often the projector drops change-feed rows older than the retention.
PRUNE_EVERY_S = 60.0


async def prune_change_feed(
    settings: Settings, engine: AsyncEngine, projections: Sequence[Projection], stop: asyncio.Event
) -> None:
    """Keep the change feed to `EVENTFOLD_CHANGE_RETENTION_S` (any replica may prune: it is idempotent)."""
    while not stop.is_set():
        older_than = time.time() - settings.projector.change_retention_s
        for p in projections:
            try:
                dropped = await store.prune_changes(engine, p.name, older_than)
            except Exception as exc:
                log.warning("projection=%s cannot prune its change feed (retrying): %r", p.name, exc)
            else:
                if dropped:
                    log.info("projection=%s pruned %d change-feed rows", p.name, dropped)
        await _sleep_unless(stop, PRUNE_EVERY_S)


async def run_projectors(settings: Settings, projections: Sequence[Projection], stop: asyncio.Event) -> None:
    """Run one runtime per projection over one read-store engine until `stop`."""
    from eventfold.db import create_engine

    engine = create_engine(settings.db.read_db_url, pool_size=max(2, len(projections) + 1))
    try:
        runtimes = [ProjectorRuntime(settings, p, engine) for p in projections]
        work = [asyncio.create_task(rt.run(stop)) for rt in runtimes]
        consumers = {f"projection:{rt.projection.name}": rt.consumer for rt in runtimes}
        work += health_port(settings, engine, consumers, stop, "projector")
        work.append(asyncio.create_task(prune_change_feed(settings, engine, projections, stop)))
        await run_until_stopped(work, stop, settings.projector.projector_stop_grace_s)
    finally:
        await engine.dispose()
