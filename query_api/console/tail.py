"""A live tail of a topic's events as Server-Sent Events, filtered by event type and stream id.

    GET /console/api/tail/{stream_type}?event_type=Deposited&stream_id=a-1

Each subscriber gets a consumer of its own, in no group (it commits nothing
and moves no one's offsets), assigned every partition of the topic and
positioned at their high-watermarks before the first byte is sent: the
`ready` event means every event appended after it will be shown. Events are
`event` (id `<partition>:<offset>`), a `: heartbeat` comment keeps an idle
stream open, and `closed` ends it when the server drains. A client that
stops reading is cut off after one heartbeat interval.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from aiokafka import AIOKafkaConsumer
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.types import Send

from eventfold import jsonutil
from eventfold.kafka import fetch_highwaters, new_consumer, partitions_of, start_consumer
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api.console.deps import ConsoleDep, Viewer
from query_api.console.records import shown_headers
from query_api.console.resources import ConsoleSide
from query_api.routing import STREAM_ID, SideDep
from query_api.sse import EventStreamResponse
from schemas.mapper import PoisonRecord, decode_value

router = APIRouter(prefix="/console/api", tags=["console"])
_TYPE = r"^[A-Za-z][A-Za-z0-9_]{0,99}$"


class Filter:
    def __init__(self, event_type: str | None, stream_id: str | None) -> None:
        self.event_type, self.stream_id = event_type, stream_id

    def shown(self, m: Any) -> dict[str, Any] | None:
        """The record as the tail shows it, or None when the filter leaves it out."""
        if self.stream_id is not None and m.key != self.stream_id.encode():
            return None
        base = {"partition": m.partition, "offset": m.offset, "headers": shown_headers(m.headers)}
        try:
            env = decode_value(m.value)
        except PoisonRecord as exc:
            if self.event_type is not None:
                return None
            key = m.key.decode(errors="replace") if m.key is not None else None
            return {**base, "stream_id": key, "poison": exc.reason, "detail": exc.detail}
        if self.event_type is not None and env.type != self.event_type:
            return None
        return {
            **base,
            "stream_id": env.stream_id,
            "version": env.version,
            "type": env.type,
            "schema_version": env.schema_version,
            "occurred_at": env.occurred_at.isoformat(),
            "data": env.data,
        }


@router.get(
    "/tail/{stream_type}",
    response_class=Response,
    responses={
        200: {
            "description": "Server-Sent Events: `ready`, each `event`, `closed` when the server stops.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **{k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 404, 422)},
    },
)
async def tail_events(
    side: SideDep,
    console: ConsoleDep,
    _viewer: Viewer,
    stream_type: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")],
    event_type: Annotated[str | None, Query(pattern=_TYPE)] = None,
    stream_id: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
) -> Response:
    """Follow the events appended to a stream type's topic from now on, filtered."""
    if stream_type not in console.contracts:
        raise Problem(404, "unknown_stream_type", f"no stream type {stream_type!r} here")
    kafka = side.settings.kafka
    topic = kafka.topic(stream_type)
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=100)
    try:
        await asyncio.wait_for(start_consumer(consumer), 10)
        tps = await partitions_of(consumer, topic)
        if not tps:
            raise Problem(404, "topic_not_found", f"topic {topic!r} does not exist yet")
        ends = await fetch_highwaters(kafka, [topic], timeout_s=10, require_all=True)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, ends[(tp.topic, tp.partition)])
    except BaseException:
        await consumer.stop()
        raise
    ready = {"topic": topic, "partitions": len(tps)}
    heartbeat_s = side.settings.query_api.live_heartbeat_s
    return TailStream(consumer, console, Filter(event_type, stream_id), ready, heartbeat_s)


class TailStream(EventStreamResponse):
    """One subscriber's events until it goes, the server drains, or it stops reading."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        console: ConsoleSide,
        filter: Filter,
        ready: dict[str, Any],
        heartbeat_s: float,
    ) -> None:
        super().__init__(heartbeat_s)
        self.consumer, self.console, self.filter, self.ready = consumer, console, filter, ready
        self.gone = asyncio.Event()

    def _client_gone(self) -> None:
        self.gone.set()

    async def _finished(self) -> None:
        await self.consumer.stop()

    async def _stream(self, send: Send) -> None:
        await self._write(send, b"retry: 2000\n\n" + _sse("ready", self.ready))
        await self._follow(send, self.gone)
        if not self.gone.is_set():
            await self._write(send, _sse("closed", {"detail": "the server is stopping"}), more=False)

    async def _follow(self, send: Send, gone: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not gone.is_set() and not self.console.draining.is_set():
            batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
            shown = [s for msgs in batch.values() for m in msgs if (s := self.filter.shown(m)) is not None]
            if shown:
                chunk = b"".join(_sse("event", s, f"{s['partition']}:{s['offset']}") for s in shown)
                await self._write(send, chunk)
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= self.heartbeat_s:
                await self._write(send, b": heartbeat\n\n")
                quiet_since = loop.time()


def _sse(kind: str, data: Any, id: str | None = None) -> bytes:
    head = f"event: {kind}\n" + (f"id: {id}\n" if id is not None else "")
    return head.encode() + b"data: " + jsonutil.dumps(data) + b"\n\n"
