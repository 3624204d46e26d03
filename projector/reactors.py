"""The reactor runtime: side effects on events, at least once, across crashes.

Each reactor (eventfold/reaction.py) is a member of its own consumer group
(`<prefix>.reactor.<name>`) over its topics. Records are dispatched to one
lane per stream: a stream's events are handled one after the other, in
order, and different streams concurrently, so a handler that fails and
retries holds up only its own stream. A failing handler is retried with
exponential backoff and jitter up to the reactor's `max_attempts`; then the
event is dead-lettered (`<topic>.dlq` and `projection_failures`, keyed by the
reactor's name) and its stream is blocked: its later events are recorded as
`held_back`, with their records, and not handled, until `eventfold dlq retry`
re-drives the stream in order (projector/reaction_redrive.py).

The offsets stored in the read store (`projection_offsets`, keyed by the
reactor's name) are the truth, as for a projection: a partition's offset
moves past an event only after the event was handled, passed over,
dead-lettered or held back. A crash between a handler's side effect and the
offset's write makes the event run again, with the same idempotency key.
A reactor that has no stored offsets for a partition stores the current end
(or 0 with `start="beginning"`) when it first starts, before it joins its
consumer group, so it acts on events sent after it was deployed, including
those that arrive while it is down or still joining.

Replays and rebuilds of projections never run reactors: they use their own
consumers and offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.kafka import (
    EFFECT_FETCH,
    create_topics,
    dlq_topic,
    fetch,
    fetch_highwaters,
    new_consumer,
    new_producer,
)
from eventfold.reaction import Reactor, backoff_delay
from eventfold.settings import KafkaSettings, Settings
from eventfold.tasks import cancel_and_wait, run_until_stopped
from projector import store
from projector.batch import Decoded, Failure, contiguous, decode_as, failed
from projector.deadletter import DeadLetterSink
from projector.reaction_progress import Progress
from projector.runtime import GroupCommitter
from projector.tables import projection_failures
from schemas.registry import StreamContract

log = logging.getLogger("eventfold.reactors")

HELD_BACK = "held_back"  # a later event of a stream blocked by a dead letter
_MAX_IN_HAND = 2000  # events dispatched and not finished before fetching waits
_SAVE_EVERY_S = 0.05

StreamKey = tuple[str, str]  # (topic, stream id)


def contracts_by_topic(reactor: Reactor, kafka: KafkaSettings) -> dict[str, StreamContract]:
    return {kafka.topic(c.stream_type): c for c in reactor.contracts}


def stream_of(item: Decoded | Failure) -> StreamKey | None:
    if isinstance(item, Decoded):
        return (item.topic, item.envelope.stream_id)
    if item.key:
        return (item.topic, item.key.decode(errors="replace"))
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one event ended: handled (True), passed over (None), or the failure that stopped it."""

    handled: bool | None
    failure: Failure | None = None
    attempts: int = 0


async def react(
    reactor: Reactor,
    item: Decoded | Failure,
    *,
    attempts: int,
    sleep: Callable[[float], Any],
    jitter: Callable[[], float] = random.random,
) -> Outcome:
    """Run the reactor's handler on one event, retrying with backoff; never raises an Exception."""
    if isinstance(item, Failure):
        return Outcome(False, item)
    env = item.envelope
    handler = reactor.handlers.get(env.type)
    if handler is None:
        return Outcome(None)
    key = reactor.key(env.event_id)
    for attempt in range(1, attempts + 1):
        try:
            await handler(env, item.event, key)
            return Outcome(True, attempts=attempt)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                detail = f"{why} (after {attempt} attempt{'s' if attempt > 1 else ''})"
                return Outcome(False, failed(item, "handler_error", detail), attempt)
            delay = backoff_delay(attempt, reactor.backoff_s, reactor.max_backoff_s, jitter())
            log.warning(
                "reactor=%s %s v%d attempt %d failed (retrying in %.2f s): %s",
                reactor.name,
                env.stream_id,
                env.version,
                attempt,
                delay,
                why,
            )
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def blocking_offsets(engine: AsyncEngine, reactor: str) -> dict[StreamKey, int]:
    """Every stream with recorded failures of this reactor, with the first failure's offset."""
    f = projection_failures.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(f.topic, f.key, func.min(f.offset))
            .where(f.projection == reactor, f.key.is_not(None))
            .group_by(f.topic, f.key)
        )
        return {(t, bytes(k).decode(errors="replace")): int(o) for t, k, o in rows.all()}


async def first_failure(engine: AsyncEngine, reactor: str, stream: StreamKey) -> int | None:
    f = projection_failures.c
    async with engine.connect() as conn:
        offset = await conn.scalar(
            select(func.min(f.offset)).where(
                f.projection == reactor, f.topic == stream[0], f.key == stream[1].encode()
            )
        )
    return None if offset is None else int(offset)


class _OnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ReactorRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runtime.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.runtime.take(assigned)


class ReactorRuntime:
    def __init__(self, settings: Settings, reactor: Reactor, engine: AsyncEngine) -> None:
        self.settings = settings
        self.reactor = reactor
        self.engine = engine
        self.topics = reactor.topics(settings.kafka)
        self.contracts = contracts_by_topic(reactor, settings.kafka)
        cfg = settings.projector
        session = cfg.projector_session_timeout_ms
        self.consumer: AIOKafkaConsumer = new_consumer(
            settings.kafka,
            group_id=reactor.group_id(settings.kafka),
            session_timeout_ms=session,
            heartbeat_interval_ms=min(cfg.projector_heartbeat_ms, session // 3),
            max_poll_interval_ms=max(300_000, session),
            rebalance_timeout_ms=session,
            request_timeout_ms=max(settings.kafka.request_timeout_ms, session + 5_000),
            **EFFECT_FETCH,
        )
        self.producer = new_producer(settings.kafka)
        self.sink = DeadLetterSink(self.producer)
        self.committer = GroupCommitter(self.consumer, reactor.name)
        self.progress = Progress()
        self.expected: dict[TopicPartition, tuple[int, bool]] = {}
        self.lanes: dict[StreamKey, asyncio.Queue[Decoded | Failure]] = {}
        self.workers: dict[StreamKey, asyncio.Task[None]] = {}
        self.blocked: dict[StreamKey, int] = {}
        self.lock = asyncio.Lock()
        self.generation = 0
        self.needs_seek = False
        self.handled = 0  # handled since the last save
        self.handled_total = 0
        self.last_event_at: datetime | None = None
        self.stopping = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._prepare(stop):
            return
        await self.producer.start()
        try:
            self.consumer.subscribe(self.topics, listener=_OnAssign(self))
            await self.consumer.start()
            saver = asyncio.create_task(self._save_loop(stop))
            try:
                await self._loop(stop)
            finally:
                self.stopping.set()
                await self._drop_lanes()
                await cancel_and_wait([saver])
                with contextlib.suppress(Exception):
                    await self._save()
                await self.committer.close()
                await self.consumer.stop()
        finally:
            await self.producer.stop()
            log.info("reactor=%s stopped after handling %d events", self.reactor.name, self.handled_total)

    async def _prepare(self, stop: asyncio.Event) -> bool:
        delay = 0.2
        while not stop.is_set():
            try:
                await create_topics(self.settings.kafka, self.topics + [dlq_topic(t) for t in self.topics])
                await store.ensure_status_row(self.engine, self.reactor.name, 1)
                await self._pin_start()
                self.blocked = await blocking_offsets(self.engine, self.reactor.name)
                return True
            except Exception as exc:
                log.warning("reactor=%s cannot start yet (retrying): %r", self.reactor.name, exc)
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _loop(self, stop: asyncio.Event) -> None:
        cfg = self.settings.projector
        while not stop.is_set():
            if self.needs_seek:
                async with self.lock:
                    try:
                        await self._reseek()
                        self.needs_seek = False
                    except Exception as exc:
                        log.warning("reactor=%s cannot load stored offsets: %r", self.reactor.name, exc)
                if self.needs_seek:
                    await _sleep_unless(stop, 1.0)
                continue
            if self.progress.pending() >= _MAX_IN_HAND:
                await _sleep_unless(stop, 0.05)
                continue
            generation = self.generation
            batch = await fetch(
                self.consumer,
                timeout_ms=cfg.projector_poll_ms,
                max_records=500,
                what=f"reactor={self.reactor.name}",
            )
            if batch is None:
                self.needs_seek = True
                await _sleep_unless(stop, 0.5)
                continue
            if not batch:
                continue
            async with self.lock:
                if generation != self.generation or self.needs_seek:
                    # An assignment moved positions while this was fetched: the
                    # consumer's position is past records never dispatched.
                    self.needs_seek = True
                    continue
                records = contiguous(batch, self.expected)
                if records is None:
                    log.warning("reactor=%s: records were skipped; re-reading", self.reactor.name)
                    await self._reseek()
                    continue
                for r in records:
                    self._dispatch(decode_as(self.contracts[r.topic], r))
                    self.expected[TopicPartition(r.topic, r.partition)] = (r.offset + 1, False)

    def _dispatch(self, item: Decoded | Failure) -> None:
        tp = (item.topic, item.partition)
        self.progress.dispatched(tp, item.offset)
        stream = stream_of(item)
        if stream is None:  # no key: no stream to keep in order
            stream = (item.topic, f"\x00{item.partition}")
        lane = self.lanes.get(stream)
        if lane is None:
            lane = self.lanes[stream] = asyncio.Queue()
            self.workers[stream] = asyncio.create_task(self._work(stream, lane))
        lane.put_nowait(item)

    async def _work(self, stream: StreamKey, lane: asyncio.Queue[Decoded | Failure]) -> None:
        while True:
            item = await lane.get()
            await self._finish(stream, item)
            self.progress.finished((item.topic, item.partition), item.offset)
            self.changed.set()
            if lane.empty():
                # The lane is done for now; a later event of the stream opens a new one.
                self.lanes.pop(stream, None)
                self.workers.pop(stream, None)
                return

    async def _finish(self, stream: StreamKey, item: Decoded | Failure) -> None:
        """Handle one event to its end: handled, passed over, dead-lettered or held back."""
        if await self._held_back(stream, item):
            await self._until_recorded(item, None)
            return
        outcome = await react(
            self.reactor, item, attempts=self.reactor.max_attempts, sleep=self._sleep_or_drop
        )
        if outcome.handled:
            self.handled += 1
            if isinstance(item, Decoded):
                at = item.envelope.occurred_at
                self.last_event_at = at if self.last_event_at is None else max(self.last_event_at, at)
        if outcome.failure is not None:
            log.error(
                "reactor=%s dead-lettered %s/%d@%d: %s %s",
                self.reactor.name,
                item.topic,
                item.partition,
                item.offset,
                outcome.failure.reason,
                outcome.failure.detail,
            )
            await self._until_recorded(outcome.failure, self.sink)
            self.blocked.setdefault(stream, item.offset)

    async def _held_back(self, stream: StreamKey, item: Decoded | Failure) -> bool:
        first = self.blocked.get(stream)
        if first is None or item.offset <= first:
            return False
        # `eventfold dlq retry` may have re-driven the stream since: ask the read store.
        while True:
            try:
                now = await first_failure(self.engine, self.reactor.name, stream)
                break
            except Exception as exc:
                log.warning("reactor=%s cannot read failures (retrying): %r", self.reactor.name, exc)
                await self._sleep_or_drop(1.0)
        if now is None or item.offset < now:
            self.blocked.pop(stream, None)
            return False
        self.blocked[stream] = now
        return True

    async def _until_recorded(self, item: Decoded | Failure, sink: DeadLetterSink | None) -> None:
        """Record the failure (and dead-letter it, with a sink); retried until it is stored."""
        failure = (
            item
            if isinstance(item, Failure)
            else failed(item, HELD_BACK, f"{item.envelope.stream_id} waits behind a dead letter")
        )
        delay = 0.2
        while True:
            try:
                if sink is not None:
                    await sink.send(self.reactor.name, [failure])
                async with self.engine.begin() as conn:
                    await store.record_failures(conn, self.reactor.name, [failure])
                return
            except Exception as exc:
                log.warning("reactor=%s cannot record a failure (retrying): %r", self.reactor.name, exc)
                await self._sleep_or_drop(delay)
                delay = min(delay * 2, 5.0)

    async def _sleep_or_drop(self, seconds: float) -> None:
        """A backoff sleep; stopping ends it (the lane is cancelled, the event read again later)."""
        await _sleep_unless(self.stopping, seconds)
        if self.stopping.is_set():
            raise asyncio.CancelledError

    async def _save_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)
            self.changed.clear()
            try:
                await self._save()
            except Exception as exc:
                log.warning("reactor=%s cannot store offsets (retrying): %r", self.reactor.name, exc)
            await _sleep_unless(stop, _SAVE_EVERY_S)

    async def _save(self) -> None:
        """Store the offsets every finished event allows, with the counters, in one transaction."""
        offsets = self.progress.to_store()
        if not offsets:
            return
        handled, last = self.handled, self.last_event_at
        async with self.engine.begin() as conn:
            await store.save_offsets(conn, self.reactor.name, offsets)
            await store.count_applied(conn, self.reactor.name, handled, last, store.LIVE)
        self.handled -= handled
        self.handled_total += handled
        self.progress.saved(offsets)
        self.committer.offer({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def release(self, revoked: Sequence[TopicPartition]) -> None:
        """Partitions going elsewhere: stop their lanes, store what finished."""
        async with self.lock:
            self.generation += 1
            await self._drop_lanes()
            with contextlib.suppress(Exception):
                await self._save()
            self.progress.forget((tp.topic, tp.partition) for tp in revoked)
            for tp in revoked:
                self.expected.pop(tp, None)

    async def take(self, assigned: Sequence[TopicPartition]) -> None:
        async with self.lock:
            self.generation += 1
            await self._drop_lanes()
            try:
                await self._seek(list(assigned))
            except Exception as exc:
                log.warning("reactor=%s cannot load stored offsets (retrying): %r", self.reactor.name, exc)
                self.needs_seek = True  # the loop dispatches nothing until a seek succeeds
        log.info(
            "reactor=%s assigned=%s",
            self.reactor.name,
            sorted((tp.topic, tp.partition) for tp in assigned),
        )

    async def _reseek(self) -> None:
        self.generation += 1
        await self._drop_lanes()
        await self._seek(list(self.consumer.assignment()))

    async def _seek(self, tps: list[TopicPartition]) -> None:
        """Every partition to its stored offset; a partition never read starts where `start` says."""
        if not tps:
            return
        stored = await store.load_offsets(self.engine, self.reactor.name, {tp.topic for tp in tps})
        new = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        if new:
            first: dict[tuple[str, int], int] = {(tp.topic, tp.partition): 0 for tp in new}
            if self.reactor.start == "end":
                ends = await fetch_highwaters(
                    self.settings.kafka, sorted({tp.topic for tp in new}), timeout_s=10, require_all=True
                )
                first = {k: ends[k] for k in first}
            async with self.engine.begin() as conn:
                await store.save_offsets(conn, self.reactor.name, first)
            log.info("reactor=%s starts at the %s: %s", self.reactor.name, self.reactor.start, first)
            stored = {**stored, **first}
        positions = {tp: stored[(tp.topic, tp.partition)] for tp in tps}
        for tp, offset in positions.items():
            self.consumer.seek(tp, offset)
            self.consumer.resume(tp)
            self.expected[tp] = (offset, True)
            self.progress.start((tp.topic, tp.partition), offset)
        self.committer.offer(positions)

    async def _pin_start(self) -> None:
        """Store where a reactor never run starts, as of its first start.

        Joining the consumer group takes seconds; an event sent meanwhile
        (the first command after `eventfold dev` is up, say) is after this
        start and is acted on, where the ends at the first assignment would
        already be past it.
        """
        stored = await store.load_offsets(self.engine, self.reactor.name, set(self.topics))
        ends = await fetch_highwaters(self.settings.kafka, self.topics, timeout_s=10, require_all=True)
        first = {
            key: (end if self.reactor.start == "end" else 0) for key, end in ends.items() if key not in stored
        }
        if first:
            async with self.engine.begin() as conn:
                await store.save_offsets(conn, self.reactor.name, first)
            log.info("reactor=%s starts at the %s: %s", self.reactor.name, self.reactor.start, first)

    async def _drop_lanes(self) -> None:
        """Cancel every lane: what they had not finished is read again from the stored offsets."""
        workers = list(self.workers.values())
        self.workers.clear()
        self.lanes.clear()
        await cancel_and_wait(workers)
        for tp in list(self.progress.in_hand):
            hand = self.progress.in_hand[tp]
            if hand:
                # Nothing past the first unfinished event may be stored now.
                self.progress.after_last[tp] = min(hand)
                hand.clear()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_reactors(settings: Settings, reactors: Sequence[Reactor], stop: asyncio.Event) -> None:
    """Run one runtime per reactor over one read-store engine until `stop`."""
    from eventfold.db import create_engine

    if not reactors:
        await stop.wait()
        return
    engine = create_engine(settings.db.read_db_url, pool_size=max(2, len(reactors) + 1))
    try:
        from projector.health import health_port

        runtimes = [ReactorRuntime(settings, r, engine) for r in reactors]
        consumers = {f"reactor:{rt.reactor.name}": rt.consumer for rt in runtimes}
        work = [asyncio.create_task(rt.run(stop), name=f"reactor-{rt.reactor.name}") for rt in runtimes]
        work += health_port(settings, engine, consumers, stop, "reactors")
        await run_until_stopped(work, stop, settings.projector.projector_stop_grace_s)
    finally:
        await engine.dispose()
