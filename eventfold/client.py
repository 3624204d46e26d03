"""A typed Python client for both APIs, on httpx.

    async with EventfoldClient("http://127.0.0.1:8000", "http://127.0.0.1:8001", token=key) as ef:
        done = await ef.send("account", "alice", "Deposit", {"amount": 5}, idempotency_key="pay-1")
        account = await ef.view("accounts", "alice", wait_for=done.position)

Every error answer becomes a `ProblemError` carrying the problem+json fields.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx
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

    async def projections(self) -> list[dict[str, Any]]:
        body = _ok(await self._queries.get("/projections"))
        return list(body["projections"] if isinstance(body, dict) else body)


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
    raise ProblemError(r.status_code, str(body.get("code", "http_error")), str(body.get("detail", "")), body)
