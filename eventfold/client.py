"""A typed Python client for both APIs, on httpx.

    async with EventfoldClient("http://127.0.0.1:8000", "http://127.0.0.1:8001", token=key) as ef:
        done = await ef.send("account", "alice", "Deposit", {"amount": 5}, idempotency_key="pay-1")
        account = await ef.view("accounts", "alice", wait_for=done.position)
        async for live in ef.subscribe("accounts", "alice"):
            print(live.event, live.document)   # state, then each change

Every error answer becomes a `ProblemError` carrying the problem+json fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx
import orjson
from pydantic import BaseModel


class ProblemError(Exception):
    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class EventRef(BaseModel):
    event_id: str
    type: str
    version: int


class CommandResult(BaseModel):
    stream_type: str
    stream_id: str
    version: int
    events: list[EventRef]
    position: str | None
    published: bool
    replayed: bool = False


class StreamState(BaseModel):
    stream_type: str
    stream_id: str
    version: int
    state: dict[str, Any]


class Page(BaseModel):
    """A page of a view: documents (or child rows) and the cursor of the next page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class LiveChange(BaseModel):
    """One event of a live subscription; `id` is where a later subscription resumes (`since`)."""

    event: str  # state | change | removed | reset | ready
    id: str
    subscription: str
    doc_id: str | None = None
    document: dict[str, Any] | None = None


class EventfoldClient:
    def __init__(
        self,
        command_url: str,
        query_url: str,
        *,
        token: str | None = None,
        timeout: float = 35.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._commands = httpx.AsyncClient(
            base_url=command_url, headers=headers, timeout=timeout, transport=transport
        )
        self._queries = httpx.AsyncClient(
            base_url=query_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> EventfoldClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._commands.aclose()
        await self._queries.aclose()

    async def send(
        self,
        stream_type: str,
        stream_id: str,
        command_type: str,
        data: dict[str, Any] | None = None,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> CommandResult:
        """Send a command; a 202 (durable, not yet in Kafka) has `published` False."""
        headers = {}
        if expected_version is not None:
            headers["If-Match"] = f'"{expected_version}"'
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if correlation_id is not None:
            headers["X-Correlation-ID"] = correlation_id
        r = await self._commands.post(
            f"/commands/{stream_type}/{stream_id}",
            json={"type": command_type, "data": data or {}},
            headers=headers,
        )
        result = CommandResult.model_validate(_ok(r))
        return result.model_copy(update={"replayed": r.headers.get("idempotent-replayed") == "true"})

    async def send_many(self, commands: list[dict[str, Any]]) -> list[CommandResult | ProblemError]:
        """Send many commands in one request (`POST /commands`); each one's result or problem, in order.

        Each command is a dict of `stream_type`, `stream_id`, `type`, `data`, and
        optionally `expected_version` and `idempotency_key`. A refused command is
        a `ProblemError` in its place; a request refused whole raises one.
        """
        r = await self._commands.post("/commands", json={"commands": commands})
        out: list[CommandResult | ProblemError] = []
        for item in _ok(r)["results"]:
            if "result" in item:
                result = CommandResult.model_validate(item["result"])
                out.append(result.model_copy(update={"replayed": item.get("replayed", False)}))
            else:
                out.append(_problem(item["status"], item["problem"]))
        return out

    async def stream(self, stream_type: str, stream_id: str) -> StreamState:
        return StreamState.model_validate(
            _ok(await self._commands.get(f"/streams/{stream_type}/{stream_id}"))
        )

    async def view(
        self, projection: str, doc_id: str, *, wait_for: str | None = None, wait_timeout: float | None = None
    ) -> dict[str, Any]:
        """One document of a projection (`GET /views/{projection}/{id}`)."""
        params = _wait(wait_for, wait_timeout)
        body: dict[str, Any] = _ok(await self._queries.get(f"/views/{projection}/{doc_id}", params=params))
        return body

    async def views(
        self,
        projection: str,
        *,
        filters: dict[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        wait_for: str | None = None,
    ) -> Page:
        """A page of a projection's documents in id order, matching the declared filters given."""
        params = {**(filters or {}), **_page(limit, cursor), **_wait(wait_for, None)}
        return Page.model_validate(_ok(await self._queries.get(f"/views/{projection}", params=params)))

    async def children(
        self,
        projection: str,
        doc_id: str,
        table: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        wait_for: str | None = None,
    ) -> Page:
        """A page of a document's rows in a child table, in version order."""
        params = {**_page(limit, cursor), **_wait(wait_for, None)}
        r = await self._queries.get(f"/views/{projection}/{doc_id}/{table}", params=params)
        return Page.model_validate(_ok(r))

    async def subscribe(
        self,
        projection: str,
        doc_id: str | None = None,
        *,
        filters: dict[str, Any] | None = None,
        since: str | None = None,
        max_backoff_s: float = 5.0,
    ) -> AsyncIterator[LiveChange]:
        """Follow one document (`state`, then each `change`), or every document matching `filters`.

        An async iterator over Server-Sent Events. A dropped connection, or
        the server closing it (a restart, this client falling behind), is
        resumed from the last event's id, with no gap and no repeat; a token
        that expires raises a `ProblemError` (401, `token_expired`).
        """
        path = f"/views/{projection}/{doc_id}/live" if doc_id is not None else f"/views/{projection}/live"
        params = {k: str(v) for k, v in (filters or {}).items()}
        last, backoff = since, 0.1
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            try:
                async with self._queries.stream(
                    "GET", path, params=params, headers=headers, timeout=httpx.Timeout(10.0, read=None)
                ) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        _ok(r)
                    async for kind, data, event_id in _sse(r):
                        backoff = 0.1
                        if kind == "expired":
                            raise ProblemError(401, "token_expired", data.get("reason", ""), data)
                        if kind in ("dropped", "closed"):
                            break  # resume from `last`
                        last = event_id or last
                        yield LiveChange(event=kind, id=event_id or "", **data)
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)

    async def projections(self) -> list[dict[str, Any]]:
        body = _ok(await self._queries.get("/projections"))
        return list(body["projections"] if isinstance(body, dict) else body)


async def _sse(r: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) of each Server-Sent Event in a response; comments are skipped."""
    kind, data, event_id = "message", "", None
    async for line in r.aiter_lines():
        if not line:
            if data:
                yield kind, orjson.loads(data), event_id
            kind, data, event_id = "message", "", None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                kind = value
            elif field == "data":
                data = f"{data}\n{value}" if data else value
            elif field == "id":
                event_id = value


def _page(limit: int | None, cursor: str | None) -> dict[str, Any]:
    return {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}


def _wait(wait_for: str | None, wait_timeout: float | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if wait_for is not None:
        params["wait_for"] = wait_for
    if wait_timeout is not None:
        params["wait_timeout"] = wait_timeout
    return params


def _ok(r: httpx.Response) -> Any:
    if r.status_code < 400:
        return r.json()
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text}
    raise _problem(r.status_code, body)


def _problem(status: int, body: dict[str, Any]) -> ProblemError:
    return ProblemError(status, str(body.get("code", "http_error")), str(body.get("detail", "")), body)
