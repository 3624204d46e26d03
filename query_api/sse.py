"""The base of the query API's Server-Sent Events responses (live documents, the console's tail).

A stream has no body and no Content-Length: it is as long as the
subscription. Every write has a deadline (the heartbeat interval), so a client
that stops reading is cut off rather than holding a buffer open forever.
"""

from __future__ import annotations

import asyncio

from fastapi.responses import Response
from starlette.types import Send


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

    async def _start(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

    async def _write(self, send: Send, body: bytes, *, more: bool = True) -> None:
        await asyncio.wait_for(
            send({"type": "http.response.body", "body": body, "more_body": more}), self.heartbeat_s
        )
