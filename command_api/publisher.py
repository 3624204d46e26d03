"""Relays outbox records to Kafka, keeping each stream's versions in order.

Ordering rule: a stream's events reach its partition with their versions in
order, and a batch that carries version n also carries every earlier version
that Kafka has not acknowledged. Each partition has one lane: a FIFO with at
most one batch in flight, and a failed batch goes back to the front. So a
retry can duplicate a version but never put a later one before an earlier one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from command_api.outcomes import OutboxRecord
from eventfold.kafka import partition_for
from eventfold.observability import BROKER_UP, PUBLISH_FAILURES
from eventfold.tasks import cancel_and_wait
from schemas.position import Position

log = logging.getLogger(__name__)

Ack = Callable[[list[tuple[OutboxRecord, Position]]], Awaitable[None]]
_MAX_BATCH_BYTES = 900 * 1024
_MAX_BATCH_RECORDS = 4000


@dataclass(slots=True)
class Ticket:
    """One command's records; `future` gets the last record's position, or None."""

    records: list[OutboxRecord]
    future: asyncio.Future[Position | None]


@dataclass
class _Route:
    """One topic's records that wait for the topic's partition count, in commit order."""

    topic: str
    queue: collections.deque[tuple[OutboxRecord, Ticket | None]] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class _Lane:
    topic: str
    partition: int
    pending: list[tuple[OutboxRecord, Ticket | None]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        on_ack: Ack,
        publish_timeout_s: float,
    ) -> None:
        self.producer = producer
        self.on_ack = on_ack
        self.publish_timeout_s = publish_timeout_s
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._partitions: dict[str, int] = {}
        # Per topic, records waiting for its partition count (the broker is
        # unreachable or the topic missing); while any wait, that topic's later
        # records queue behind them to keep commit order. Topics never wait on
        # each other: order is per stream, and a stream lives in one topic.
        self._routes: dict[str, _Route] = {}
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        # Natural keys this process holds, queued or in flight, until deleted from the outbox.
        self.known: set[tuple[str, str, int]] = set()
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self._started

    def start(self) -> None:
        """Accept records; lanes and routes start as their topics first appear."""

    async def stop(self) -> None:
        self._closed = True
        for waiting in self._routes.values():
            waiting.wake.set()
        for lane in self._lanes.values():
            lane.wake.set()
        await cancel_and_wait(
            [
                *(waiting.task for waiting in self._routes.values()),
                *(lane.task for lane in self._lanes.values()),
            ]
        )
        # Unsent batches may be abandoned: their events are still in the outbox.
        # Stopping a producer that never started is harmless and closes it cleanly.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), 2.0)

    def submit(self, records: Iterable[OutboxRecord], ticket: Ticket | None = None) -> None:
        """Queue records in commit order; a ticket covers the records given with it."""
        items = list(records)
        for i, rec in enumerate(items):
            self.known.add(rec.natural_key)
            last = ticket if ticket is not None and i == len(items) - 1 else None
            waiting = self._routes.get(rec.topic)
            if (waiting is None or not waiting.queue) and self._started and rec.topic in self._partitions:
                # The common case, synchronous: a whole commit batch reaches its
                # lanes before any lane sends, so lanes send batches, not records.
                self._place(rec, last)
            else:
                waiting = waiting or self._route_for(rec.topic)
                waiting.queue.append((rec, last))
                waiting.wake.set()

    def forget(self, keys: Iterable[tuple[str, str, int]]) -> None:
        self.known.difference_update(keys)

    def backlog(self) -> int:
        waiting = sum(len(r.queue) for r in self._routes.values())
        return waiting + sum(len(lane.pending) for lane in self._lanes.values())

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.producer.start()
                self._started = True

    async def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            parts = await self.producer.partitions_for(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} has no partitions")
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    def _route_for(self, topic: str) -> _Route:
        waiting = self._routes[topic] = _Route(topic)
        waiting.task = asyncio.create_task(self._route(waiting), name=f"route-{topic}")
        return waiting

    async def _route(self, waiting: _Route) -> None:
        """Place a topic's queued records in lanes, in commit order, once Kafka tells its partition count."""
        backoff = 0.05
        while not self._closed:
            await waiting.wake.wait()
            waiting.wake.clear()
            while waiting.queue and not self._closed:
                try:
                    await asyncio.wait_for(self._ensure_started(), self.publish_timeout_s)
                    await asyncio.wait_for(self._partition_count(waiting.topic), self.publish_timeout_s)
                except Exception as exc:  # broker unreachable or topic missing: keep order; waiters time out
                    self.failures += 1
                    PUBLISH_FAILURES.inc()
                    log.warning(
                        "publisher cannot reach topic %s (%d records wait; a topic that does not"
                        " exist is made by `eventfold topics create`): %r",
                        waiting.topic,
                        len(waiting.queue),
                        exc,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                while waiting.queue:
                    self._place(*waiting.queue.popleft())

    async def _delivered(
        self, fut: asyncio.Future[Any], take: list[tuple[OutboxRecord, Ticket | None]]
    ) -> Any:
        """The batch's metadata once Kafka acknowledges it.

        Commands waiting on it get their answer (202, not yet published) after
        `publish_timeout_s`, but the lane keeps waiting on the same send: the
        producer retries it within its own delivery timeout (idempotently, on
        a broker that grants producer ids), whereas sending the batch again
        would write every record a second time when the first send lands
        late, as it does across a partition leader's failover.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.publish_timeout_s)
        except TimeoutError:
            for _, ticket in take:
                if ticket is not None and not ticket.future.done():
                    ticket.future.set_result(None)
            return await fut

    def _place(self, rec: OutboxRecord, ticket: Ticket | None) -> None:
        lane = self._lane(rec.topic, partition_for(rec.key, self._partitions[rec.topic]))
        lane.pending.append((rec, ticket))
        lane.wake.set()

    def _lane(self, topic: str, partition: int) -> _Lane:
        key = (topic, partition)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(topic, partition)
            lane.task = asyncio.create_task(self._drain(lane), name=f"lane-{topic}-{partition}")
        return lane

    async def _drain(self, lane: _Lane) -> None:
        backoff = 0.05
        while not self._closed:
            await lane.wake.wait()
            lane.wake.clear()
            while lane.pending and not self._closed:
                batch = self.producer.create_batch()
                take = _fill(batch, _take(lane.pending), int(time.time() * 1000))
                batch.close()
                try:
                    fut = await asyncio.wait_for(
                        self.producer.send_batch(batch, lane.topic, partition=lane.partition),
                        self.publish_timeout_s,
                    )
                    meta = await self._delivered(fut, take)
                except Exception as exc:
                    self.failures += 1
                    PUBLISH_FAILURES.inc()
                    log.warning("publish to %s[%d] failed: %r", lane.topic, lane.partition, exc)
                    for _, ticket in take:
                        if ticket is not None and not ticket.future.done():
                            ticket.future.set_result(None)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                del lane.pending[: len(take)]
                acked = []
                for i, (rec, ticket) in enumerate(take):
                    pos = Position(lane.topic, lane.partition, meta.offset + i)
                    acked.append((rec, pos))
                    if ticket is not None and not ticket.future.done():
                        ticket.future.set_result(pos)
                await self.on_ack(acked)


def _take(
    pending: list[tuple[OutboxRecord, Ticket | None]],
) -> list[tuple[OutboxRecord, Ticket | None]]:
    size = 0
    for n, (rec, _) in enumerate(pending):
        size += len(rec.value) + 200
        if n >= _MAX_BATCH_RECORDS or (n > 0 and size > _MAX_BATCH_BYTES):
            return pending[:n]
    return pending[:]


def _fill(
    batch: BatchBuilder, take: list[tuple[OutboxRecord, Ticket | None]], timestamp_ms: int
) -> list[tuple[OutboxRecord, Ticket | None]]:
    """Append records until the batch is full; returns those it holds, the first at least.

    `_take` only estimates sizes. The builder knows each record's encoded size,
    headers included, and refuses one that would overflow the batch; that one
    and those after it stay pending for the next batch, never counted as sent.
    """
    for n, (rec, _) in enumerate(take):
        if batch.append(key=rec.key, value=rec.value, timestamp=timestamp_ms, headers=rec.headers) is None:
            return take[:n]
    return take


async def check_broker(publisher: Publisher, timeout_s: float) -> None:
    """Raise unless the broker answers a metadata request in time."""

    async def _probe() -> None:
        await publisher._ensure_started()
        await publisher.producer.client.fetch_all_metadata()

    await asyncio.wait_for(_probe(), timeout_s)


class BrokerWatch:
    """The broker's last known state, reported beside readiness and as `eventfold_broker_up`.

    It is reported, never required: commands are durable once committed to the
    write store's outbox, so the command API keeps accepting them (202) while
    Kafka is away. The watch loop keeps the gauge true when nothing polls /readyz.
    """

    def __init__(self, publisher: Publisher, timeout_s: float = 2.0) -> None:
        self.publisher = publisher
        self.timeout_s = timeout_s
        self.state = "unknown"

    async def probe(self) -> str:
        try:
            await check_broker(self.publisher, self.timeout_s)
        except Exception as exc:
            self.state = f"unreachable: {type(exc).__name__}"
            BROKER_UP.set(0)
        else:
            self.state = "ok"
            BROKER_UP.set(1)
        return self.state

    async def run(self, interval_s: float) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)
