"""The change feed: every read-model change the projector commits, to every subscriber here.

The projector writes one `view_changes` row per live batch, listing the
documents it changed, in the batch's own transaction (projector/store.py),
so a change is in the feed exactly when it is in the read model, also when
the projector dies right after its commit. Each query API process tails that
table on its own (woken by the projector's NOTIFY on PostgreSQL, polling on
SQLite): every process sees every change, and no process depends on
another. The rows of one projection become visible in `seq` order, and a
document's position is its row's `seq` times CHANGE_SLOTS plus its place in
the row, so "the changes after position n" is a complete answer, and the
position is what a subscriber resumes from.

For a change the feed reads the document as it is now. A document already
past the change's version has a later change the next read will find; that
one sends it, so each document goes out once per state, in order, with the
position of the change that made it. A subscriber remembers the last
position it was sent (its cursor) and is never sent one at or before it:
catching up after a reconnect and the live tail can overlap without a
repeat.

Subscribers never block the feed: events go into a bounded mailbox, and a
mailbox that fills is closed with the reason, for its connection to end.
When a blue/green rebuild swaps the tables in, each subscriber gets a
`reset` with the current state instead of the rebuild's history.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventfold.problems import Problem
from projector.store import OFFSETS_CHANNEL
from projector.tables import CHANGE_SLOTS, projection_status, view_change_horizons, view_changes
from query_api.documents import DocumentTable
from query_api.listen import listen_forever, wait_event
from query_api.views import Reads, utc

log = structlog.get_logger("eventfold.query")

# Feed rows (batches) read per projection per round: a backlog is worked off in rounds, in order.
_ROUND = 64
# Documents delivered between chances for the connections' writers to run.
_YIELD_EVERY = 64


def end_of(seq: int) -> int:
    """The last position of feed row `seq`: a reader there has seen the whole row."""
    return seq * CHANGE_SLOTS + CHANGE_SLOTS - 1


def changes_in(
    seq: int, changes: str, after: int, doc_id: str | None = None
) -> Iterator[tuple[int, str, int]]:
    """(position, document, version) of feed row `seq` past position `after` (of `doc_id` only)."""
    if doc_id is not None and orjson.dumps(doc_id).decode() not in changes:
        return  # the row's JSON holds the id exactly so encoded if the document is in it
    base = seq * CHANGE_SLOTS
    for place, (doc, version) in enumerate(orjson.loads(changes)):
        if base + place > after and (doc_id is None or doc == doc_id):
            yield base + place, doc, version


def cursor_token(projection: str, seq: int) -> str:
    """The opaque position a subscriber resumes from (the SSE `id`)."""
    return base64.urlsafe_b64encode(orjson.dumps(["live", projection, seq])).rstrip(b"=").decode()


def parse_cursor(projection: str, token: str) -> int:
    """The position in `token`, which must be one of this projection's; a 400 problem if not."""
    try:
        padded = token + "=" * (-len(token) % 4)
        kind, name, seq = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, TypeError):
        kind = name = seq = None
    if kind != "live" or name != projection or not isinstance(seq, int) or seq < 0 or len(token) > 512:
        raise Problem(
            400,
            "invalid_live_cursor",
            f"{token[:80]!r} is not a position of projection {projection!r}'s changes",
        )
    return seq


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """What a subscriber is sent.

    `state` (the document when subscribing), `change` (it changed), `removed`
    (it no longer matches a filtered subscription), `reset` (the tables were
    rebuilt: the current state, or for a filtered subscription a cue to list
    again), `ready` (a filtered subscription is live; its position).
    """

    kind: str
    subscription: str
    seq: int
    document: dict[str, Any] | None = None
    doc_id: str | None = None


class Mailbox:
    """Events waiting for one connection; closed with a reason once `limit` are unsent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: deque[LiveEvent] = deque()
        self.ready = asyncio.Event()
        self.closed: str | None = None

    def put(self, event: LiveEvent) -> None:
        if self.closed is not None:
            return
        if len(self.events) >= self.limit:
            self.close(f"slow consumer: {len(self.events)} changes unsent")
            return
        self.events.append(event)
        self.ready.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.events.clear()
        self.ready.set()

    async def take(self, timeout_s: float) -> list[LiveEvent]:
        """What is waiting, after waiting up to `timeout_s` for something (or the close)."""
        await wait_event(self.ready, timeout_s)
        self.ready.clear()
        out = list(self.events)
        self.events.clear()
        return out


@dataclass(eq=False)
class Subscriber:
    """One subscription: a document by id, or every document equal to `filters`."""

    name: str  # as the client names it, e.g. "accounts/a-1" or "accounts?owner=ann"
    projection: str
    mailbox: Mailbox
    doc_id: str | None = None
    filters: Mapping[str, Any] = field(default_factory=dict)
    cursor: int = 0  # the last position sent (or passed over)
    version: int = 0  # the document version last sent (one-document subscriptions)
    matching: set[str] = field(default_factory=set)  # documents last sent as matching

    def send(self, kind: str, seq: int, doc: dict[str, Any] | None, doc_id: str | None = None) -> None:
        self.mailbox.put(LiveEvent(kind, self.name, seq, doc, doc_id))

    def changed(self, seq: int, doc_id: str, doc: dict[str, Any]) -> None:
        """Offer a change at `seq`: sent unless already sent, or (filtered) if it matches or left."""
        if seq <= self.cursor:
            return
        self.cursor = seq
        if self.doc_id is not None:
            if int(doc["version"]) > self.version:
                self.version = int(doc["version"])
                self.send("change", seq, doc, doc_id)
            return
        if matches(doc, self.filters):
            self.matching.add(doc_id)
            self.send("change", seq, doc, doc_id)
        elif doc_id in self.matching:
            self.matching.discard(doc_id)
            self.send("removed", seq, None, doc_id)


def matches(doc: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    return all(_comparable(doc.get(k)) == _comparable(v) for k, v in filters.items())


def _comparable(value: Any) -> Any:
    return utc(value) if isinstance(value, dt.datetime) else value


class ProjectionFeed:
    """The subscribers of one projection and how far its rows have been read."""

    def __init__(self, docs: DocumentTable) -> None:
        self.docs = docs
        self.by_doc: dict[str, set[Subscriber]] = {}
        self.filtered: set[Subscriber] = set()
        self.tail: int | None = None  # the last position read; None while nobody subscribes
        self.generation: int | None = None
        self.lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.docs.name

    @property
    def subscribed(self) -> bool:
        return bool(self.by_doc or self.filtered)

    def add(self, sub: Subscriber) -> None:
        if sub.doc_id is not None:
            self.by_doc.setdefault(sub.doc_id, set()).add(sub)
        else:
            self.filtered.add(sub)

    def remove(self, sub: Subscriber) -> None:
        if sub.doc_id is not None:
            subs = self.by_doc.get(sub.doc_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.by_doc[sub.doc_id]
        else:
            self.filtered.discard(sub)
        if not self.subscribed:
            # Read from the end again when someone next subscribes.
            self.tail = self.generation = None

    def everyone(self) -> list[Subscriber]:
        return [s for subs in self.by_doc.values() for s in subs] + list(self.filtered)


class ChangeFeed:
    """Tails `view_changes` for every projection someone here subscribes to."""

    def __init__(
        self,
        engine: AsyncEngine,
        reads: Reads,
        docs: Sequence[DocumentTable],
        *,
        poll_s: float = 0.05,
        fallback_s: float = 1.0,
        application_name: str = "eventfold-change-feed",
    ) -> None:
        self.engine = engine
        self.reads = reads
        self.feeds = {d.name: ProjectionFeed(d) for d in docs}
        self.poll_s = poll_s
        self.fallback_s = fallback_s
        self.application_name = application_name
        self._listens = engine.dialect.name == "postgresql"
        self._listening = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="change-feed")

    def drain(self) -> None:
        """End every subscription (the server is stopping): each gets a final `closed`."""
        for feed in self.feeds.values():
            for sub in feed.everyone():
                sub.mailbox.close("the server is shutting down")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.drain()

    # --- subscribing ---------------------------------------------------------

    def feed(self, projection: str) -> ProjectionFeed:
        try:
            return self.feeds[projection]
        except KeyError:
            raise Problem(
                404, "unknown_projection", f"no projection named {projection!r} is served"
            ) from None

    async def subscribe(self, sub: Subscriber, since: int | None) -> None:
        """Register `sub` and send what it is owed first: the state, or the changes after `since`."""
        feed = self.feed(sub.projection)
        async with feed.lock:
            await self._ensure_tail(feed)
            assert feed.tail is not None
            feed.add(sub)
            self._wake.set()
            try:
                if since is not None and since < await self._horizon(feed):
                    # The changes after `since` were pruned: start over.
                    sub.cursor = feed.tail
                    await self._reset_one(feed, sub)
                elif since is not None:
                    sub.cursor = since
                    await self._catch_up(feed, sub, since)
                    sub.cursor = max(sub.cursor, feed.tail)
                elif sub.doc_id is not None:
                    sub.cursor = feed.tail
                    doc = await self._document(feed, sub.doc_id)
                    sub.version = int(doc["version"]) if doc else 0
                    sub.send("state", feed.tail, doc, sub.doc_id)
                else:
                    sub.cursor = feed.tail
                    sub.send("ready", feed.tail, None)
            except BaseException:
                feed.remove(sub)
                raise

    def unsubscribe(self, sub: Subscriber) -> None:
        feed = self.feeds.get(sub.projection)
        if feed is not None:
            feed.remove(sub)

    async def _ensure_tail(self, feed: ProjectionFeed) -> None:
        if feed.tail is not None:
            return
        c = view_changes.c
        async with self.engine.connect() as conn:
            top = await conn.scalar(select(func.max(c.seq)).where(c.projection == feed.name))
            feed.generation = await conn.scalar(
                select(projection_status.c.generation).where(projection_status.c.projection == feed.name)
            )
        feed.tail = end_of(int(top)) if top is not None else await self._horizon(feed)

    async def _horizon(self, feed: ProjectionFeed) -> int:
        """The end of the last row pruned: a subscriber before it may have missed changes."""
        h = view_change_horizons.c
        async with self.engine.connect() as conn:
            seq = await conn.scalar(select(h.seq).where(h.projection == feed.name))
        return end_of(int(seq)) if seq is not None else 0

    async def _rows(
        self, conn: AsyncConnection, feed: ProjectionFeed, after: int, through: int | None
    ) -> Any:
        """Up to a round of the feed's rows with `seq` in (after, through], in order."""
        c = view_changes.c
        stmt = select(c.seq, c.changes).where(c.projection == feed.name, c.seq > after)
        if through is not None:
            stmt = stmt.where(c.seq <= through)
        return (await conn.execute(stmt.order_by(c.seq).limit(_ROUND))).all()

    async def _catch_up(self, feed: ProjectionFeed, sub: Subscriber, since: int) -> None:
        """The changes after `since` up to the feed's tail that `sub` should see, latest state each."""
        assert feed.tail is not None
        latest: dict[str, tuple[int, int]] = {}
        through = feed.tail // CHANGE_SLOTS
        after = since // CHANGE_SLOTS - 1  # the row holding `since` may have changes past it
        async with self.engine.connect() as conn:
            while rows := await self._rows(conn, feed, after, through):
                for seq, changes in rows:
                    for position, doc_id, version in changes_in(seq, changes, since, sub.doc_id):
                        latest[doc_id] = (position, version)
                after = int(rows[-1].seq)
        if sub.doc_id is None:
            # Any of them may have matched before the disconnect: one that no
            # longer does is sent as `removed` (a client drops what it lacks).
            sub.matching.update(latest)
        await self._deliver(feed, latest, [sub])

    # --- reading the feed ----------------------------------------------------

    async def _run(self) -> None:
        keeper = asyncio.create_task(self._listen()) if self._listens else None
        failures = 0
        try:
            while True:
                await wait_event(self._wake, self.fallback_s if self._listening else self.poll_s)
                self._wake.clear()
                busy = [f for f in self.feeds.values() if f.subscribed]
                try:
                    for feed in busy:
                        while await self._advance(feed):
                            pass
                    failures = 0
                except Exception as exc:
                    failures += 1
                    retry_in = min(self.poll_s * 2**failures, 2.0)
                    log.warning("change_feed_read_failed", error=repr(exc), retry_in=retry_in)
                    await asyncio.sleep(retry_in)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(BaseException):
                    await keeper

    async def _listen(self) -> None:
        def notified(payload: str) -> None:
            feed = self.feeds.get(payload)
            if feed is not None and feed.subscribed:
                self._wake.set()

        def up(_pid: int) -> None:
            self._listening = True
            self._wake.set()

        def down() -> None:
            self._listening = False
            self._wake.set()

        await listen_forever(
            self.engine,
            OFFSETS_CHANNEL,
            application_name=self.application_name,
            notified=notified,
            up=up,
            down=down,
            what="change_feed",
        )

    async def _advance(self, feed: ProjectionFeed) -> bool:
        """One round of `feed`'s new rows to its subscribers; True if more may be waiting."""
        async with feed.lock:
            if not feed.subscribed or feed.tail is None:
                return False
            async with self.engine.connect() as conn:
                rows = await self._rows(conn, feed, feed.tail // CHANGE_SLOTS, None)
                generation = await conn.scalar(
                    select(projection_status.c.generation).where(projection_status.c.projection == feed.name)
                )
            if generation != feed.generation and feed.generation is None:
                feed.generation = generation  # the projector had not started when the first came
            elif generation != feed.generation:
                feed.generation = generation
                if rows:
                    feed.tail = end_of(int(rows[-1].seq))
                for sub in feed.everyone():
                    sub.cursor = max(sub.cursor, feed.tail)
                    await self._reset_one(feed, sub)
                return len(rows) == _ROUND
            if not rows:
                return False
            latest: dict[str, tuple[int, int]] = {}
            for seq, changes in rows:
                for position, doc_id, version in changes_in(seq, changes, feed.tail):
                    latest[doc_id] = (position, version)
            await self._deliver(feed, latest, None)
            feed.tail = end_of(int(rows[-1].seq))
            return len(rows) == _ROUND

    async def _deliver(
        self, feed: ProjectionFeed, latest: Mapping[str, tuple[int, int]], only: list[Subscriber] | None
    ) -> None:
        """Send each document's latest change to its subscribers (or to `only`), in position order."""
        if only is None:
            wanted = list(latest) if feed.filtered else [d for d in latest if d in feed.by_doc]
        else:
            wanted = list(latest)
        docs = await self._documents(feed, wanted)
        for n, (doc_id, (seq, version)) in enumerate(sorted(latest.items(), key=lambda kv: kv[1][0])):
            doc = docs.get(doc_id)
            if doc is None or int(doc["version"]) > version:
                continue  # a later change of it carries this state, and will be read
            subs = only if only is not None else [*feed.by_doc.get(doc_id, ()), *feed.filtered]
            for sub in subs:
                sub.changed(seq, doc_id, doc)
            if n % _YIELD_EVERY == _YIELD_EVERY - 1:
                # Let the writers take what is waiting: a burst is not a slow client.
                await asyncio.sleep(0)

    async def _reset_one(self, feed: ProjectionFeed, sub: Subscriber) -> None:
        assert feed.tail is not None
        if sub.doc_id is not None:
            doc = await self._document(feed, sub.doc_id)
            sub.version = int(doc["version"]) if doc else 0
            sub.send("reset", feed.tail, doc, sub.doc_id)
        else:
            sub.matching.clear()
            sub.send("reset", feed.tail, None)

    async def _document(self, feed: ProjectionFeed, doc_id: str) -> dict[str, Any] | None:
        return (await self._documents(feed, [doc_id])).get(doc_id)

    async def _documents(self, feed: ProjectionFeed, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        t = feed.docs.table
        rows = await self.reads.rows(select(t).where(t.c.id.in_(list(ids))))
        return {r.id: feed.docs.shape(r) for r in rows}
