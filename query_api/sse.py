"""The base of the query API's Server-Sent Events responses (live documents, the console's tail).

A stream has no body and no Content-Length: it is as long as the
subscription. Every write has a deadline (the heartbeat interval), so a client
that stops reading is cut off rather than holding a buffer open forever.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, heartbeat_s: float) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.heartbeat_s = heartbeat_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._client_gone()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._stream(send)
        except TimeoutError:
            pass  # the client stopped reading: returning unfinished makes the server drop it
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            await self._finished()

    async def _stream(self, send: Send) -> None:
        """Write the stream's events until it ends."""
        raise NotImplementedError

    def _client_gone(self) -> None:
        """The client disconnected: make `_stream` end."""

    async def _finished(self) -> None:
        """Release what the stream held; called however it ended."""

    async def _write(self, send: Send, body: bytes, *, more: bool = True) -> None:
        await asyncio.wait_for(
            send({"type": "http.response.body", "body": body, "more_body": more}), self.heartbeat_s
        )
