"""The command service: group commit, then publish, then forget.

Requests queue here; one loop takes whatever has queued while the previous
transaction ran and commits it as one batch (group commit), then hands the
events to the publisher in commit order. A relay loop publishes what a crashed
process or an outage left in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import defaultdict

from command_api.outcomes import (
    Accepted,
    OutboxRecord,
    Outcome,
    PendingCommand,
    Replayed,
    Unavailable,
)
from command_api.publisher import Publisher, Ticket
from command_api.store import CommitConflict, WriteStore
from eventfold import jsonutil
from eventfold.observability import COMMIT_BATCH, EVENTS_APPENDED, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE
from eventfold.settings import CommandApiSettings
from eventfold.tasks import cancel_and_wait
from schemas.position import Position

log = logging.getLogger(__name__)
NaturalKey = tuple[str, str, int]


class CommandService:
    def __init__(
        self,
        store: WriteStore,
        publisher: Publisher,
        settings: CommandApiSettings,
        publish_timeout_s: float,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self.publish_timeout_s = publish_timeout_s
        self._queue: asyncio.Queue[PendingCommand] = asyncio.Queue()
        self._acked: list[OutboxRecord] = []
        self._responses: list[tuple[str, int, bytes]] = []
        self._responses_saved: list[asyncio.Future[None]] = []
        # Idempotency keys whose first command is still being published here.
        self._inflight_keys: dict[str, asyncio.Future[Replayed]] = {}
        self._finalize_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_relay_error: str | None = None
        # Keys acknowledged and deleted while a commit was reading the outbox:
        # that commit may still see them as predecessors, and must not resend them.
        # Keyed by commit, not held in a list: two commits' sets are often equal
        # (both empty), and removing by equality would drop the other commit's set
        # and leave this one to collect every acknowledged key for ever.
        self._forgotten_during_commit: dict[int, set[NaturalKey]] = {}
        self._commit_ids = itertools.count()
        self._cleared_since_vacuum = 0

    async def start(self) -> None:
        self.publisher.on_ack = self._on_ack
        self.publisher.start()
        self._tasks = [
            *(
                asyncio.create_task(self._commit_loop(), name=f"commit-loop-{n}")
                for n in range(self.store.commit_concurrency(self.settings.commit_concurrency))
            ),
            asyncio.create_task(self._finalize_loop(), name="finalize-loop"),
            asyncio.create_task(self._relay_loop(), name="relay-loop"),
        ]
        if self.settings.outbox_vacuum_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._vacuum_loop(), name="outbox-vacuum-loop"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        with contextlib.suppress(Exception):
            await self._flush_finalized()
        await self.publisher.stop()

    def held(self) -> dict[str, int]:
        """What this process holds for commands and records in flight; all 0 when idle."""
        return {
            "queued": self._queue.qsize(),
            "commits_in_flight": len(self._forgotten_during_commit),
            "idempotency_keys_in_flight": len(self._inflight_keys),
            "acks_to_finalize": len(self._acked),
            "responses_to_save": len(self._responses),
            "records_unacknowledged": len(self.publisher.known),
            "records_to_publish": self.publisher.backlog(),
        }

    async def execute(self, cmd: PendingCommand) -> tuple[Outcome, bool]:
        """Run one command; returns its outcome and whether Kafka acknowledged it."""
        key = cmd.idempotency_key
        first: asyncio.Future[Replayed] | None = None
        if key is not None and key not in self._inflight_keys:
            first = self._inflight_keys[key] = asyncio.get_running_loop().create_future()
        try:
            outcome, published = await self._execute(cmd, first)
        finally:
            if first is not None:
                del self._inflight_keys[key]  # type: ignore[arg-type]
        if first is not None:
            if isinstance(outcome, Accepted):
                body = outcome.body(published=published)
                first.set_result(Replayed(200 if published else 202, body))
            else:
                first.cancel()
        return outcome, published

    async def _execute(
        self, cmd: PendingCommand, own: asyncio.Future[Replayed] | None
    ) -> tuple[Outcome, bool]:
        self._queue.put_nowait(cmd)
        outcome = await cmd.future
        if isinstance(outcome, Replayed) and outcome.status == 202:
            # The first command may still be on its way to Kafka in this process:
            # its final answer is the one to repeat.
            running = self._inflight_keys.get(cmd.idempotency_key or "")
            if running is not None and running is not own:
                with contextlib.suppress(asyncio.CancelledError):
                    return await asyncio.shield(running), True
        if not isinstance(outcome, Accepted) or not outcome.records:
            return outcome, isinstance(outcome, Accepted)
        ticket: Ticket = cmd.ticket
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                position = await asyncio.shield(ticket.future)
        except TimeoutError:
            position = None
        final = Accepted(
            outcome.stream_type,
            outcome.stream_id,
            outcome.version,
            outcome.events,
            outcome.records,
            position,
        )
        if cmd.idempotency_key is not None:
            published = position is not None
            saved = asyncio.get_running_loop().create_future()
            self._responses.append(
                (
                    cmd.idempotency_key,
                    200 if published else 202,
                    jsonutil.dumps(final.body(published=published)),
                )
            )
            self._responses_saved.append(saved)
            self._finalize_wake.set()
            # A repeat must find this answer, not the provisional one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.publish_timeout_s):
                    await asyncio.shield(saved)
        return final, position is not None

    async def _commit_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.settings.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception as exc:  # never leave a request hanging
                log.exception("commit loop failed")
                for cmd in batch:
                    if not cmd.future.done():
                        cmd.future.set_result(Unavailable(f"internal error: {exc!r}"))

    async def _commit(self, batch: list[PendingCommand]) -> None:
        commit_id = next(self._commit_ids)
        forgotten: set[NaturalKey] = set()
        self._forgotten_during_commit[commit_id] = forgotten
        try:
            await self._commit_tracked(batch, forgotten)
        finally:
            del self._forgotten_during_commit[commit_id]

    async def _commit_tracked(self, batch: list[PendingCommand], forgotten: set[NaturalKey]) -> None:
        for attempt in range(self.settings.commit_retries):
            try:
                result = await self.store.commit(batch, self.publisher.known)
                break
            except CommitConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
            except Exception as exc:
                log.warning("write store unavailable: %r", exc)
                for cmd in batch:
                    cmd.future.set_result(Unavailable("the write store is unavailable"))
                return
        else:
            for cmd in batch:
                cmd.future.set_result(Unavailable("too much contention on these streams; retry"))
            return
        COMMIT_BATCH.observe(len(batch))
        loop = asyncio.get_running_loop()
        # Unacknowledged events of these streams left by another process go first.
        skip = self.publisher.known | forgotten
        self.publisher.submit(r for r in result.predecessors if r.natural_key not in skip)
        for cmd, outcome in zip(batch, result.outcomes, strict=True):
            if isinstance(outcome, int):
                _follow(batch[outcome], cmd)
                continue
            if isinstance(outcome, Accepted) and outcome.records:
                EVENTS_APPENDED.labels(cmd.stream_type).inc(len(outcome.records))
                cmd.ticket = Ticket(outcome.records, loop.create_future())
                self.publisher.submit(outcome.records, cmd.ticket)
            cmd.future.set_result(outcome)

    async def _on_ack(self, acked: list[tuple[OutboxRecord, Position]]) -> None:
        self._acked.extend(rec for rec, _ in acked)
        self._finalize_wake.set()

    async def _finalize_loop(self) -> None:
        while True:
            await self._finalize_wake.wait()
            self._finalize_wake.clear()
            try:
                await self._flush_finalized()
            except Exception as exc:  # the rows stay; the relay republishes at worst
                log.warning("could not clear published outbox rows: %r", exc)
                await asyncio.sleep(0.5)
                self._finalize_wake.set()

    async def _flush_finalized(self) -> None:
        acked, self._acked = self._acked, []
        responses, self._responses = self._responses, []
        saved, self._responses_saved = self._responses_saved, []
        try:
            await self.store.finalize(acked, responses)
        except Exception:
            self._acked[:0] = acked
            self._responses[:0] = responses
            self._responses_saved[:0] = saved
            raise
        for fut in saved:
            if not fut.done():
                fut.set_result(None)
        keys = [r.natural_key for r in acked]
        self._cleared_since_vacuum += len(keys)
        self.publisher.forget(keys)
        for forgotten in self._forgotten_during_commit.values():
            forgotten.update(keys)

    async def _relay_loop(self) -> None:
        grace = 0.0  # at start, whatever is in the outbox was left by a dead process
        last_expiry = 0.0
        while True:
            try:
                await self.relay_once(grace)
                backlog, oldest = await self.store.outbox_stats()
                OUTBOX_BACKLOG.set(backlog)
                OUTBOX_OLDEST_AGE.set(time.time() - oldest if oldest is not None else 0)
                if time.monotonic() - last_expiry > 60:
                    await self.store.expire_idempotency_keys(self.settings.idempotency_ttl_s)
                    last_expiry = time.monotonic()
                self.last_relay_error = None
            except Exception as exc:
                self.last_relay_error = repr(exc)
                log.warning("outbox relay failed: %r", exc)
            grace = self.settings.relay_grace_s
            await asyncio.sleep(self.settings.relay_interval_s)

    async def _vacuum_loop(self) -> None:
        """Vacuum the outbox once enough rows were cleared, so its reads stay short."""
        every, enough = self.settings.outbox_vacuum_interval_s, self.settings.outbox_vacuum_rows
        while True:
            await asyncio.sleep(every)
            if self._cleared_since_vacuum < enough:
                continue
            self._cleared_since_vacuum = 0
            try:
                refused = await self.store.reclaim_outbox()
            except Exception as exc:  # the next round tries again; autovacuum runs anyway
                log.warning("could not vacuum the outbox: %r", exc)
                continue
            if refused is not None:
                log.warning(
                    "the outbox is left to autovacuum: PostgreSQL refused this role's VACUUM (%s); "
                    "run the command API as the tables' owner, or set "
                    "EVENTFOLD_OUTBOX_VACUUM_INTERVAL_S=0 to silence this",
                    refused,
                )
                return

    async def relay_once(self, grace_s: float) -> int:
        """Publish outbox rows this process does not hold; whole stream prefixes only.

        The oldest rows' keys are read first; only those of streams to relay
        are read whole (under load the rest are in flight from their writers).
        """
        rows = await self.store.waiting(self.settings.relay_batch)
        by_stream: dict[tuple[str, str], list[tuple[NaturalKey, float]]] = defaultdict(list)
        for key, created in rows:
            by_stream[key[:2]].append((key, created))
        now = time.time()
        relayed: list[NaturalKey] = []
        for items in by_stream.values():
            if any(key in self.publisher.known for key, _ in items):
                continue
            if now - items[0][1] < grace_s:
                continue  # probably in flight in a live process
            relayed.extend(key for key, _ in items)
        records = await self.store.outbox_records(relayed)
        # A commit here may have taken some of these streams up while they were read.
        held = {r.natural_key[:2] for r in records if r.natural_key in self.publisher.known}
        records = [r for r in records if r.natural_key[:2] not in held]
        if records:
            self.publisher.submit(records)
        return len(records)


def _follow(first: PendingCommand, repeat: PendingCommand) -> None:
    """A repeat of an idempotency key within one batch gets the first's outcome."""

    def _copy(fut: asyncio.Future[Outcome]) -> None:
        repeat.ticket = first.ticket
        if not repeat.future.done():
            repeat.future.set_result(fut.result())

    first.future.add_done_callback(_copy)
