"""Live subscriptions in tests: a real uvicorn server for the query API, and raw SSE reading.

Streaming needs a real server (httpx's in-process transport buffers whole
responses), so the query API runs under uvicorn on a free loopback port, in
the test's event loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI

from eventfold.broker import free_port
from eventfold.projection import Projection
from eventfold.runner import http_server
from eventfold.settings import Settings
from tests.helpers import wait_until


@asynccontextmanager
async def serving(app: FastAPI, *, send_buffer: int | None = None) -> AsyncIterator[str]:
    """`app` under uvicorn on 127.0.0.1; yields its base URL.

    `send_buffer` sets SO_SNDBUF on the listening socket (connections inherit
    it), so a client that stops reading blocks the server's writes after
    kilobytes rather than the megabytes loopback would otherwise buffer.
    """
    server = http_server(app, "127.0.0.1", free_port())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", server.config.port))
    sock.listen(128)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def up() -> bool:
        if task.done():
            task.result()
        return bool(server.started)

    await wait_until(up, timeout=30, what="the query API to listen")
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def query_server(
    settings: Settings, projections: Sequence[Projection] | None = None, *, send_buffer: int | None = None
) -> AsyncIterator[tuple[str, FastAPI]]:
    """The bank's query API (or one of `projections`) served for real; (URL, app)."""
    from query_api.bootstrap import create_app
    from tests.support.bank import bank

    app = create_app(settings, list(projections or bank.projections), bank.routers)
    async with serving(app, send_buffer=send_buffer) as url:
        yield url, app


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (as far as it is complete)."""
    out = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            out += rest[:size] if size else b""
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(event, data, id) of every complete event in raw SSE bytes; comments skipped."""
    out: list[tuple[str, dict[str, Any] | None, str | None]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:
        kind, data, eid = "message", None, None
        for line in block.decode().split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            if name == "event":
                kind = value
            elif name == "data":
                data = orjson.loads(value)
            elif name == "id":
                eid = value
        if data is not None or kind != "message":
            out.append((kind, data, eid))
    return out
