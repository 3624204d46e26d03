"""Live read models: Server-Sent Events and one WebSocket, served from the change feed.

    GET /views/{projection}/{id}/live     the document (`state`), then each `change`
    GET /views/{projection}/live?f=v      each `change` (and `removed`) of matching documents
    WS  /ws                               many subscriptions on one connection

Every event carries its position (the SSE `id`, or `"id"` in a WebSocket
message); `Last-Event-ID` or `?since=` (SSE) and `"since"` (WebSocket) resume
after it with no gap and no repeat (query_api/feed.py says why). A heartbeat
keeps idle connections open through proxies. A client that does not keep up
is disconnected with a final word, and never holds the others back.

WebSocket close codes: 1001 the server is stopping; 1008 too slow (changes
piled up unsent); 4400 the first message was not understood; 4401 no valid
token, or the token expired; 4403 the token does not grant `read`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.types import Send

from eventfold import jsonutil
from eventfold.auth import Authenticator, Principal, require
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api.columns import column_type
from query_api.deps import SideDep
from query_api.documents import DocumentTable, refuse_unknown_filters
from query_api.feed import ChangeFeed, LiveEvent, Mailbox, Subscriber, cursor_token, parse_cursor
from query_api.routing import STREAM_ID
from query_api.sse import EventStreamResponse

_SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of Server-Sent Events: `state`, `change`, `removed`, `reset`, `ready`; "
        "a final `dropped`, `expired` or `closed` when the server ends it.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **{k: v for k, v in PROBLEM_RESPONSES.items() if k in (400, 401, 403, 404, 422)},
}
Since = Annotated[
    str | None, Query(max_length=512, description="Resume after this position (an event's `id`).")
]
LastEventId = Annotated[str | None, Header(max_length=512)]
DocId = Annotated[str, Path(pattern=STREAM_ID, description="The document's id: its stream's id.")]


class EventStream(Response):
    """What the live routes answer, as OpenAPI describes it (`LiveStream` does the streaming)."""

    media_type = "text/event-stream"


def live_router(docs: Sequence[DocumentTable]) -> APIRouter:
    """The live routes of these projections; mounted before the views, whose `/{id}` would match `live`."""
    router = APIRouter(tags=["live"])
    for d in docs:
        _add_live(router, d)
    router.add_api_websocket_route("/ws", live_socket)
    return router


def _add_live(router: APIRouter, docs: DocumentTable) -> None:
    name = docs.name
    reader = Depends(require("read"))

    async def live_document(
        side: SideDep,
        id: DocId,
        principal: Principal = reader,
        since: Since = None,
        last_event_id: LastEventId = None,
    ) -> Response:
        sub = Subscriber(f"{name}/{id}", name, _mailbox(side), doc_id=id)
        return await _open(side, sub, last_event_id or since, principal)

    async def live_matching(
        request: Request,
        side: SideDep,
        principal: Principal = reader,
        since: Since = None,
        last_event_id: LastEventId = None,
    ) -> Response:
        raw = {k: v for k, v in request.query_params.items() if k != "since"}
        sub = Subscriber(_name(name, raw), name, _mailbox(side), filters=coerce_filters(docs, raw))
        return await _open(side, sub, last_event_id or since, principal)

    filters = ", ".join(f"`{f}`" for f in docs.filters) or "none"
    router.add_api_route(
        f"/views/{name}/live",
        live_matching,
        methods=["GET"],
        response_class=EventStream,
        responses=_SSE_RESPONSES,
        operation_id=f"live_{name}",
        summary=f"Follow the {name} documents",
        description=f"Server-Sent Events: every change of the `{name}` documents equal to the query's "
        f"filters (declared: {filters}).",
        openapi_extra={
            "parameters": [
                {"name": f, "in": "query", "required": False, "schema": {"type": "string"}}
                for f in docs.filters
            ]
        },
    )
    router.add_api_route(
        f"/views/{name}/{{id}}/live",
        live_document,
        methods=["GET"],
        response_class=EventStream,
        responses=_SSE_RESPONSES,
        operation_id=f"live_{name}_document",
        summary=f"Follow one {name} document",
        description=f"Server-Sent Events: the `{name}` document now (`state`), then each `change` of it.",
    )


def _mailbox(side: Any) -> Mailbox:
    return Mailbox(side.settings.query_api.live_buffer)


def _name(projection: str, filters: Mapping[str, str]) -> str:
    return projection + ("?" + "&".join(f"{k}={v}" for k, v in sorted(filters.items())) if filters else "")


def coerce_filters(docs: DocumentTable, raw: Mapping[str, str]) -> dict[str, Any]:
    """Query-string filters as the column's values; a 400 problem for an undeclared or invalid one."""
    refuse_unknown_filters(docs, raw)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        python = column_type(docs.table.c[key]).python
        try:
            out[key] = TypeAdapter(python).validate_python(value, strict=False)
        except ValidationError:
            raise Problem(400, "invalid_filter", f"{key}={value[:80]!r} is not a {python.__name__}") from None
    return out


async def _open(side: Any, sub: Subscriber, token: str | None, principal: Principal) -> Response:
    since = parse_cursor(sub.projection, token) if token else None
    feed: ChangeFeed = side.feed
    await feed.subscribe(sub, since)
    return LiveStream(feed, sub, principal.expires_at, side.settings.query_api.live_heartbeat_s)


def _valid_id(doc_id: str) -> bool:
    return re.fullmatch(STREAM_ID, doc_id) is not None


def sse_bytes(event: LiveEvent, projection: str) -> bytes:
    body = {"subscription": event.subscription, "doc_id": event.doc_id, "document": event.document}
    data = jsonutil.dumps(body).decode()
    return f"id: {cursor_token(projection, event.seq)}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def _final(kind: str, reason: str) -> bytes:
    return f"event: {kind}\ndata: {jsonutil.dumps({'reason': reason}).decode()}\n\n".encode()


_CLIENT_GONE = "the client went away"


class LiveStream(EventStreamResponse):
    """One subscriber's Server-Sent Events, until the client goes, the token expires or it falls behind."""

    def __init__(
        self, feed: ChangeFeed, sub: Subscriber, expires_at: datetime | None, heartbeat_s: float
    ) -> None:
        super().__init__(heartbeat_s)
        self.feed, self.sub, self.expires_at = feed, sub, expires_at

    def _client_gone(self) -> None:
        self.sub.mailbox.close(_CLIENT_GONE)

    async def _finished(self) -> None:
        self.feed.unsubscribe(self.sub)

    async def _stream(self, send: Send) -> None:
        final = await self._events(send)
        if final is not None and self.sub.mailbox.closed != _CLIENT_GONE:
            await self._write(send, final, more=False)
        else:
            await self._write(send, b"", more=False)

    async def _events(self, send: Send) -> bytes | None:
        """Write events until the mailbox closes or the token expires; the final event to write."""
        mailbox, projection = self.sub.mailbox, self.sub.projection
        await self._write(send, b"retry: 2000\n\n")
        while True:
            timeout = self.heartbeat_s
            if self.expires_at is not None:
                left = (self.expires_at - datetime.now(UTC)).total_seconds()
                if left <= 0:
                    return _final("expired", "the token has expired")
                timeout = min(timeout, left)
            events = await mailbox.take(timeout)
            if mailbox.closed is not None:
                kind = "dropped" if mailbox.closed.startswith("slow consumer") else "closed"
                return _final(kind, mailbox.closed)
            chunk = b"".join(sse_bytes(e, projection) for e in events) if events else b": heartbeat\n\n"
            await self._write(send, chunk)


# --- WebSocket -------------------------------------------------------------------

_PROTOCOL = "eventfold"
_TOKEN_PREFIX = "bearer."


async def live_socket(ws: WebSocket) -> None:
    """Subscriptions over one WebSocket: `{"subscribe": "accounts/a-1", "since": "<id>"}`,
    `{"subscribe": "accounts?owner=ann"}`, `{"unsubscribe": "accounts/a-1"}`.

    The token comes in the `Sec-WebSocket-Protocol` header (`eventfold,
    bearer.<token>`) or as the first message (`{"token": "<token>"}`), never in
    the URL. Each subscribe is answered `{"ack": name}` (or `{"error": ...,
    "subscription": name}`) before its first event.
    """
    side = ws.app.state.side
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await ws.accept(subprotocol=_PROTOCOL if _PROTOCOL in offered else None)
    token = next((p[len(_TOKEN_PREFIX) :] for p in offered if p.startswith(_TOKEN_PREFIX)), None)
    authenticator: Authenticator = ws.app.state.authenticator
    if token is None and not authenticator.disabled:
        try:
            first = await asyncio.wait_for(ws.receive_json(), 10.0)
            token = (
                first["token"] if isinstance(first, dict) and isinstance(first.get("token"), str) else None
            )
        except (TimeoutError, ValueError, KeyError, WebSocketDisconnect):
            token = None
        if token is None:
            await _close(ws, 4401, 'send the token first: {"token": "<token>"}')
            return
    try:
        principal = authenticator.authenticate(f"Bearer {token}")
    except Problem as exc:
        await _close(ws, 4401, exc.detail)
        return
    if not principal.allows("read"):
        await _close(ws, 4403, "the token does not grant read")
        return
    await Socket(ws, side, principal).run()


class Socket:
    """One WebSocket's subscriptions: a reader of requests and a single writer of everything sent."""

    def __init__(self, ws: WebSocket, side: Any, principal: Principal) -> None:
        cfg = side.settings.query_api
        self.ws, self.feed, self.principal = ws, side.feed, principal
        self.docs: dict[str, DocumentTable] = {name: f.docs for name, f in side.feed.feeds.items()}
        self.mailbox = Mailbox(cfg.live_buffer)
        self.heartbeat_s = cfg.live_heartbeat_s
        self.max_subs = cfg.live_subscriptions_per_socket
        self.subs: dict[str, Subscriber] = {}

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        except WebSocketDisconnect:
            pass
        finally:
            self.mailbox.close(_CLIENT_GONE)
            for sub in self.subs.values():
                self.feed.unsubscribe(sub)
            with contextlib.suppress(BaseException):
                await writer

    async def _read(self) -> None:
        while True:
            raw = await self.ws.receive_text()
            try:
                msg = jsonutil.loads(raw)
            except ValueError:
                self._reply({"error": {"code": "invalid_message", "detail": "a message is one JSON object"}})
                continue
            if not isinstance(msg, dict):
                self._reply({"error": {"code": "invalid_message", "detail": "a message is one JSON object"}})
            elif isinstance(msg.get("subscribe"), str):
                await self._subscribe(msg["subscribe"], msg.get("since"))
            elif set(msg) == {"token"}:
                continue  # a token sent first although the header had one, or none was needed
            elif isinstance(msg.get("unsubscribe"), str):
                sub = self.subs.pop(msg["unsubscribe"], None)
                if sub is not None:
                    self.feed.unsubscribe(sub)
                self._reply({"unsubscribed": msg["unsubscribe"]})
            else:
                detail = 'expected {"subscribe": ...} or {"unsubscribe": ...}'
                self._reply({"error": {"code": "invalid_message", "detail": detail}})

    async def _subscribe(self, name: str, since: Any) -> None:
        try:
            if name in self.subs:
                raise Problem(409, "already_subscribed", f"{name!r} is already subscribed on this connection")
            if len(self.subs) >= self.max_subs:
                raise Problem(429, "too_many_subscriptions", f"at most {self.max_subs} per connection")
            sub = self._parse(name)
            cursor = parse_cursor(sub.projection, since) if isinstance(since, str) else None
            self._reply({"ack": name})
            self.subs[name] = sub
            try:
                await self.feed.subscribe(sub, cursor)
            except BaseException:
                self.subs.pop(name, None)
                raise
        except Problem as exc:
            self._reply({"error": {"code": exc.code, "detail": exc.detail}, "subscription": name})

    def _parse(self, name: str) -> Subscriber:
        path, _, query = name.partition("?")
        projection, _, doc_id = path.partition("/")
        docs = self.docs.get(projection)
        if docs is None:
            raise Problem(404, "unknown_projection", f"no projection named {projection!r} is served")
        if doc_id:
            if query or not _valid_id(doc_id):
                raise Problem(
                    422, "invalid_subscription", f"{name!r} is not projection/id or projection?filters"
                )
            return Subscriber(name, projection, self.mailbox, doc_id=doc_id)
        filters = coerce_filters(docs, dict(parse_qsl(query, keep_blank_values=True)))
        return Subscriber(name, projection, self.mailbox, filters=filters)

    def _reply(self, message: dict[str, Any]) -> None:
        # Through the mailbox, so an ack is sent before the subscription's first event.
        self.mailbox.put(LiveEvent("reply", "", 0, message))

    async def _write(self) -> None:
        mailbox, ws = self.mailbox, self.ws
        try:
            while True:
                timeout = self.heartbeat_s
                expires = self.principal.expires_at
                if expires is not None:
                    left = (expires - datetime.now(UTC)).total_seconds()
                    if left <= 0:
                        await _close(ws, 4401, "the token has expired")
                        return
                    timeout = min(timeout, left)
                events = await mailbox.take(timeout)
                if mailbox.closed is not None:
                    if mailbox.closed.startswith("slow consumer"):
                        await _close(ws, 1008, mailbox.closed)
                    elif mailbox.closed != _CLIENT_GONE:
                        await _close(ws, 1001, mailbox.closed)
                    return
                if not events:
                    await self._send({"heartbeat": datetime.now(UTC).isoformat()})
                for e in events:
                    await self._send(e.document if e.kind == "reply" else _ws_message(e))
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            with contextlib.suppress(Exception):
                await _close(ws, 1008, "too slow: a write did not complete in time")
        finally:
            mailbox.close(_CLIENT_GONE)

    async def _send(self, message: Any) -> None:
        await asyncio.wait_for(self.ws.send_text(jsonutil.dumps(message).decode()), self.heartbeat_s)


def _ws_message(e: LiveEvent) -> dict[str, Any]:
    projection = e.subscription.partition("?")[0].partition("/")[0]
    return {
        "subscription": e.subscription,
        "event": e.kind,
        "id": cursor_token(projection, e.seq),
        "doc_id": e.doc_id,
        "document": e.document,
    }


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason[:120])
