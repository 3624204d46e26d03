"""The process-manager runtime: events in, commands out, each effect once.

For each process manager (eventfold/process.py) one consumer in its own group
(`<prefix>.process.<name>`) reads the topics of its contracts. Per batch, in
ONE read-store transaction: correlate each event to its instance, load the
instance, call the pure `handle`, and store the new state, the commands it
asked for (each under an idempotency key derived from the causing event,
`<pm>:<event id>:<n>`) and the deadline, with the batch's next offsets (in
`projection_offsets`, keyed `process:<name>`). The commands are sent
afterwards through the command path (decided and published like any other
command): one at a time per instance, each outcome stored before the next is
sent, and many instances at once (EVENTFOLD_PROCESS_SEND_CONCURRENCY), since a
command waits for its publication and one slow broker must not hold every
other instance up behind it. A crash anywhere therefore re-sends a command only under its stored key,
which the write store answers with the first outcome: no command takes effect
twice. A refusal goes to `on_refused` (in the same transaction that drops the
command); one it does not handle marks the instance `stuck` with the refusal.
A loop wakes instances whose deadline passed (read from the table, so also
after a restart) and calls `on_deadline`, keys `<pm>:<instance>:deadline:<t>:<n>`.

Sending before deadlines: an instance's deadline fires only once it has no
command left to send, so `on_deadline` always sees every command it sent
either accepted or refused. Instances are handled by one process at a time:
run one process per process manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold import jsonutil
from eventfold.aggregate import Aggregates
from eventfold.kafka import EFFECT_FETCH, ConsumerBroken, create_topics, fetch, new_consumer
from eventfold.process import Dispatch, ProcessManager, Refusal, Step
from eventfold.settings import Settings
from eventfold.tasks import cancel_and_wait, run_until_stopped
from projector import process_store as ps
from projector import store
from projector.apply import next_offsets
from projector.batch import Decoded, Failure, contiguous, decode_as
from projector.runtime import seek_to_stored

log = logging.getLogger("eventfold.process")

# How often instances with commands to resend and due deadlines are looked for.
TICK_S = 0.25


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of a command: `accepted` (durable), `refused` (with code), or `retry` (nothing stored)."""

    outcome: str
    code: str = ""
    detail: str = ""


Sender = Callable[[str, Dispatch, str | None], Awaitable[Sent]]


# The namespace of the ids of commands a process manager sends (uuid5 of their key).
COMMAND_ID_NAMESPACE = uuid.UUID("3b0c9a51-7e21-4d7f-8f0e-1c5a2d9e6b43")


def command_id(key: str) -> str:
    """The id of the command sent under `key`: the same on every resend.

    It is the `causation_id` of the command's events, so the topics show
    which command caused them; one key decided twice would show as one
    causation on two decisions.
    """
    return str(uuid.uuid5(COMMAND_ID_NAMESPACE, key))


def command_sender(service: Any) -> Sender:
    """Send through an in-process `CommandService` (command_api), as the HTTP route does."""
    from command_api.outcomes import Accepted, PendingCommand, Refused, Replayed

    async def send(key: str, dispatch: Dispatch, correlation_id: str | None) -> Sent:
        data = dispatch.command.model_dump(mode="json")
        kind = type(dispatch.command).__name__
        pending = PendingCommand(
            stream_type=dispatch.stream_type,
            stream_id=dispatch.stream_id,
            command=dispatch.command,
            expected_version=None,
            idempotency_key=key,
            request_hash=jsonutil.canonical_hash(
                [dispatch.stream_type, dispatch.stream_id, kind, data, None]
            ),
            correlation_id=correlation_id or jsonutil.new_id(),
            command_id=command_id(key),
            future=asyncio.get_running_loop().create_future(),
        )
        outcome, _published = await service.execute(pending)
        if isinstance(outcome, Accepted | Replayed):
            return Sent("accepted")
        if isinstance(outcome, Refused):
            return Sent("refused", outcome.code, outcome.detail)
        return Sent("retry", detail=repr(outcome))

    return send


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ProcessManagerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        rt = self.runtime
        async with rt.lock:
            rt.generation += 1
            try:
                positions = await seek_to_stored(rt.consumer, rt.engine, rt.pm.offsets_key, list(assigned))
            except Exception as exc:
                # The consume loop seeks before its next batch instead: records
                # fetched from wherever the consumer stands are never applied.
                log.warning("process=%s cannot load stored offsets on assignment: %r", rt.pm.name, exc)
                rt.needs_seek = True
            else:
                rt.expected.update({tp: (o, True) for tp, o in positions.items()})
        log.info("process=%s assigned=%s", rt.pm.name, sorted((tp.topic, tp.partition) for tp in assigned))


class ProcessManagerRuntime:
    def __init__(
        self,
        settings: Settings,
        pm: ProcessManager[Any],
        engine: AsyncEngine,
        aggregates: Aggregates,
        send: Sender,
    ) -> None:
        self.settings = settings
        self.pm = pm
        self.engine = engine
        self.aggregates = aggregates
        self.send = send
        self.topics = {settings.kafka.topic(t): pm.contract(t) for t in pm.stream_types}
        cfg = settings.projector
        session = cfg.projector_session_timeout_ms
        # The projector's group settings (projector/runtime.py), for the same reasons.
        self.consumer = new_consumer(
            settings.kafka,
            group_id=pm.group_id(settings.kafka),
            session_timeout_ms=session,
            heartbeat_interval_ms=min(cfg.projector_heartbeat_ms, session // 3),
            max_poll_interval_ms=max(60_000, session),
            rebalance_timeout_ms=session,
            request_timeout_ms=max(settings.kafka.request_timeout_ms, session + 5_000),
            **EFFECT_FETCH,
        )
        self.lock = asyncio.Lock()
        self.generation = 0
        self.needs_seek = False  # an assignment could not seek to the stored offsets
        self.expected: dict[TopicPartition, tuple[int, bool]] = {}
        # The correlation id of the event behind each instance's latest step, for the commands it sends.
        self._correlation: dict[str, str | None] = {}
        # One drain per instance at a time (its commands go in order); `_wanted`
        # holds instances to look at again once their running drain is done.
        self._draining: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._sending = asyncio.Semaphore(cfg.process_send_concurrency)

    async def run(self, stop: asyncio.Event) -> None:
        """Resend what a crash left, fire what fell due meanwhile, then consume until `stop`."""
        delay = 0.2
        while not stop.is_set():
            try:
                await create_topics(self.settings.kafka, list(self.topics))
                await self.tick()
                break
            except Exception as exc:
                log.warning("process=%s cannot start yet (retrying): %r", self.pm.name, exc)
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, 5.0)
        if stop.is_set():
            return
        self.consumer.subscribe(list(self.topics), listener=_SeekOnAssign(self))
        await self.consumer.start()
        log.info("process=%s reads %s", self.pm.name, ", ".join(self.topics))
        ticking = asyncio.create_task(self._tick_loop(stop), name=f"process-{self.pm.name}-tick")
        try:
            await self._consume(stop)
        finally:
            await cancel_and_wait([ticking, *self._draining.values()])
            await self.consumer.stop()

    async def _consume(self, stop: asyncio.Event) -> None:
        """Read, apply and send until `stop`; a failure anywhere is retried from the stored offsets.

        Applied batches and their offsets commit together and the commands
        they stored are sent again by the tick loop, so going back to the
        stored offsets after a failure (an unreachable database, a broker
        error) loses nothing and repeats nothing.
        """
        failing = 0
        seek = False
        while not stop.is_set():
            try:
                if seek or self.needs_seek:
                    await self._reseek()
                    seek = False
                seek = await self._consume_batch(stop)
                failing = 0
            except ConsumerBroken:
                raise
            except Exception:
                failing += 1
                seek = True
                log.exception("process=%s batch failed (%d in a row)", self.pm.name, failing)
                await _sleep_unless(stop, min(0.2 * failing, 5.0))

    async def _consume_batch(self, stop: asyncio.Event) -> bool:
        """One batch read, applied and its commands sent; True if the stored offsets must be sought."""
        generation = self.generation
        batch = await fetch(self.consumer, timeout_ms=200, max_records=500, what=f"process={self.pm.name}")
        if batch is None:  # the consumer failed on the way to a broker
            await _sleep_unless(stop, 0.5)
            return True
        records = contiguous(batch, self.expected)
        if records is None:
            return True
        if not records:
            return False
        items = [decode_as(self.topics[r.topic], r) for r in records]
        touched = await self._apply(items, generation)
        if touched is None:
            return True
        for (topic, partition), offset in next_offsets(items).items():
            self.expected[TopicPartition(topic, partition)] = (offset, False)
        await self._drain_all(touched)
        return False

    async def _reseek(self) -> None:
        async with self.lock:
            assigned = list(self.consumer.assignment())
            positions = await seek_to_stored(self.consumer, self.engine, self.pm.offsets_key, assigned)
            self.expected.update({tp: (o, True) for tp, o in positions.items()})
            self.generation += 1
            self.needs_seek = False

    async def _apply(self, items: Sequence[Decoded | Failure], generation: int) -> list[str] | None:
        """Fold one batch into its instances and store them with the offsets; None if a seek intervened."""
        pm = self.pm
        async with self.lock:
            if generation != self.generation or self.needs_seek:
                return None
            events: list[tuple[str, Decoded]] = []
            for item in items:
                if isinstance(item, Failure):
                    log.warning(
                        "process=%s skips an unreadable record %s/%d@%d: %s %s",
                        pm.name,
                        item.topic,
                        item.partition,
                        item.offset,
                        item.reason,
                        item.detail,
                    )
                    continue
                instance = pm.correlate(item.envelope, item.event)
                if instance is not None:
                    events.append((instance, item))
            async with self.engine.begin() as conn:
                loaded = await ps.load_instances(conn, pm, self.aggregates, [i for i, _ in events])
                changed: dict[str, ps.Instance] = {}
                for iid, item in events:
                    current = changed.get(iid) or loaded.get(iid) or ps.Instance(iid, pm.initial)
                    if current.status == ps.DONE:
                        # Ended for good: a late or repeated event (publishing is
                        # at least once) must not bring it back without a deadline.
                        continue
                    if current.status == ps.STUCK:
                        log.warning(
                            "process=%s instance=%s is stuck; %s not handled",
                            pm.name,
                            iid,
                            item.envelope.type,
                        )
                        continue
                    step = pm.handle(current.state, item.envelope, item.event)
                    if not current.stored and iid not in changed and pm.untouched(step):
                        continue
                    changed[iid] = ps.apply_step(current, step, f"{pm.name}:{item.envelope.event_id}")
                    if changed[iid].pending:
                        self._correlation[iid] = item.envelope.correlation_id
                    else:  # nothing to send: nothing to correlate (and nothing kept per ended instance)
                        self._correlation.pop(iid, None)
                await ps.save_instances(conn, pm.name, changed.values())
                await store.save_offsets(conn, pm.offsets_key, next_offsets(items))
            return [i for i, inst in changed.items() if inst.pending]

    async def _drain_all(self, iids: Iterable[str]) -> None:
        """Drain these instances side by side; returns when each has nothing left to send now."""
        tasks = [self._drain_task(iid) for iid in dict.fromkeys(iids)]
        failed = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, Exception)]
        if failed:
            raise failed[0]

    def _drain_task(self, iid: str) -> asyncio.Task[None]:
        self._wanted.add(iid)
        task = self._draining.get(iid)
        if task is None or task.done():
            task = asyncio.create_task(self._drain_wanted(iid), name=f"process-{self.pm.name}-send")
            self._draining[iid] = task
        return task

    async def _drain_wanted(self, iid: str) -> None:
        try:
            while iid in self._wanted:
                self._wanted.discard(iid)
                await self._drain(iid)
        finally:
            self._wanted.discard(iid)
            if self._draining.get(iid) is asyncio.current_task():
                del self._draining[iid]

    async def _drain(self, iid: str) -> None:
        """Send the instance's commands in order, storing each outcome; stop at a `retry`.

        The lock is held only to read and to store: the send itself runs
        unlocked, and what it answered is applied to the instance as stored
        then, so events folded in meanwhile are kept.
        """
        pm = self.pm
        while True:
            async with self.lock, self.engine.connect() as conn:
                current = (await ps.load_instances(conn, pm, self.aggregates, [iid])).get(iid)
            if current is None or current.status == ps.STUCK or not current.pending:
                self._correlation.pop(iid, None)
                return
            first = current.pending[0]
            async with self._sending:
                try:
                    sent = await self.send(first.key, first.issue, self._correlation.get(iid))
                except Exception as exc:  # whatever became of it, the same key is sent again
                    sent = Sent("retry", detail=repr(exc))
            if sent.outcome == "retry":
                log.warning(
                    "process=%s instance=%s: %s not sent yet: %s", pm.name, iid, first.key, sent.detail
                )
                return
            async with self.lock, self.engine.begin() as conn:
                now = (await ps.load_instances(conn, pm, self.aggregates, [iid])).get(iid)
                if now is None or not now.pending or now.pending[0].key != first.key:
                    continue  # another process got there first; look again
                rest = replace(now, pending=now.pending[1:])
                if sent.outcome == "refused":
                    rest = self._refused(rest, first, sent)
                await ps.save_instances(conn, pm.name, [rest])

    def _refused(self, instance: ps.Instance, refused: ps.Pending, sent: Sent) -> ps.Instance:
        refusal = Refusal(refused.issue, sent.code, sent.detail)
        step: Step[Any] | None = self.pm.on_refused(instance.state, instance.id, refusal)
        if step is None:
            dispatch = refused.issue
            reason = (
                f"{dispatch.stream_type}/{dispatch.stream_id} refused {type(dispatch.command).__name__} "
                f"({refused.key}): {sent.code}: {sent.detail}"
            )
            log.error("process=%s instance=%s is stuck: %s", self.pm.name, instance.id, reason)
            return replace(instance, status=ps.STUCK, reason=reason)
        return ps.apply_step(instance, step, f"{refused.key}:refused")

    async def tick(self) -> None:
        """Resend every instance's unsent commands, then fire the deadlines that passed."""
        async with self.engine.connect() as conn:
            pending = await ps.with_pending(conn, self.pm.name)
        await self._drain_all(pending)
        async with self.engine.connect() as conn:
            due = await ps.due(conn, self.pm.name, time.time())
        await self._drain_all([iid for iid in due if await self._fire(iid)])

    async def _fire(self, iid: str) -> bool:
        pm = self.pm
        async with self.lock, self.engine.begin() as conn:
            current = (await ps.load_instances(conn, pm, self.aggregates, [iid])).get(iid)
            if (
                current is None
                or current.status != ps.ACTIVE
                or current.pending
                or current.deadline is None
                or current.deadline > time.time()
            ):
                return False
            step = pm.on_deadline(current.state, iid)
            log.info("process=%s instance=%s: deadline passed", pm.name, iid)
            fired = ps.apply_step(current, step, f"{pm.name}:{iid}:deadline:{current.deadline!r}")
            await ps.save_instances(conn, pm.name, [fired])
            return bool(fired.pending)

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_unless(stop, TICK_S)
            try:
                await self.tick()
            except Exception as exc:
                log.warning("process=%s tick failed (retrying): %r", self.pm.name, exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_process_managers(
    settings: Settings,
    managers: Sequence[ProcessManager[Any]],
    aggregates: Aggregates,
    stop: asyncio.Event,
) -> None:
    """Run every process manager over one read-store engine and one in-process command side."""
    from command_api.bootstrap import command_side
    from eventfold.db import create_engine
    from projector.health import health_port

    if not managers:
        await stop.wait()
        return
    engine = create_engine(settings.db.read_db_url, pool_size=max(2, len(managers) + 1))
    try:
        async with command_side(settings, aggregates) as side:
            send = command_sender(side.service)
            runtimes = [ProcessManagerRuntime(settings, m, engine, aggregates, send) for m in managers]
            consumers = {f"process:{rt.pm.name}": rt.consumer for rt in runtimes}
            work = [asyncio.create_task(rt.run(stop), name=f"process-{rt.pm.name}") for rt in runtimes]
            work += health_port(settings, engine, consumers, stop, "process-managers")
            await run_until_stopped(work, stop, settings.projector.projector_stop_grace_s)
    finally:
        await engine.dispose()
