"""ASGI middleware that refuses oversized requests with problem+json the client can read.

Invariant: a refusal is sent only once the client has nothing more to send (its
body was read and discarded), or with `Connection: close` when it never will.
A client writes its whole body before it reads the answer; answering and
closing while it still writes resets the connection, and the client sees a
reset instead of the 413. So the rest of the body is drained, up to a bound
(`drain_bytes`, total body size): past it the answer is sent and the
connection closed, which costs such a client the answer but bounds what a
refusal can cost the server. A client that sent `Expect: 100-continue` has
sent no body yet and is answered at once.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventfold.problems import problem_response

# Bodies up to this size are read to the end before a refusal is sent.
DEFAULT_DRAIN_BYTES = 32 * 1024 * 1024


class BodyTooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def _drain(receive: Receive, seen: int, budget: int) -> bool:
    """Read and discard the rest of the body; False if it ran past `budget` bytes in all."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return True  # the client went away: nothing left to wait for
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if seen > budget:
            return False


async def _refuse_readably(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    drain_bytes: int,
    reading: bool = False,
    seen: int = 0,
    body_done: bool = False,
) -> None:
    declared = _header(scope, b"content-length")
    # Once the app has read, the server has sent 100 Continue and the body is coming.
    awaiting_continue = not reading and (_header(scope, b"expect") or b"").lower() == b"100-continue"
    drained = body_done
    if not body_done and not awaiting_continue:
        try:
            too_long = declared is not None and int(declared) > drain_bytes
        except ValueError:
            too_long = True
        # Reading the body of a client waiting for 100 Continue would make the
        # server send it the 100 and invite the very body being refused.
        drained = not too_long and await _drain(receive, seen, drain_bytes)
    response = problem_response(
        status,
        code,
        detail,
        instance=scope.get("path"),
        headers=None if drained else {"Connection": "close"},
    )
    await response(scope, receive, send)


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with a 413 problem+json, before the app sees them."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        drain_bytes: int = DEFAULT_DRAIN_BYTES,
        by_path: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Paths whose bodies have a limit of their own (a batch of commands is larger than one).
        self.by_path = by_path or {}
        self.drain_bytes = max(drain_bytes, max_bytes, *self.by_path.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.by_path.get(scope.get("path", ""), self.max_bytes)
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(scope, receive, send, max_bytes)
                return
        seen = 0
        body_done = False
        started = False

        async def limited() -> Message:
            nonlocal seen, body_done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(
                    scope, receive, send, max_bytes, reading=True, seen=seen, body_done=body_done
                )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        max_bytes: int,
        *,
        reading: bool = False,
        seen: int = 0,
        body_done: bool = False,
    ) -> None:
        await _refuse_readably(
            scope,
            receive,
            send,
            413,
            "body_too_large",
            f"the request body exceeds {max_bytes} bytes",
            drain_bytes=self.drain_bytes,
            reading=reading,
            seen=seen,
            body_done=body_done,
        )


class HeaderSizeLimit:
    """Refuse requests whose headers exceed a limit with a 431 problem+json."""

    def __init__(
        self, app: ASGIApp, max_bytes: int = 16 * 1024, drain_bytes: int = DEFAULT_DRAIN_BYTES
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if size > self.max_bytes:
                await _refuse_readably(
                    scope,
                    receive,
                    send,
                    431,
                    "headers_too_large",
                    f"the request headers exceed {self.max_bytes} bytes",
                    drain_bytes=self.drain_bytes,
                )
                return
        await self.app(scope, receive, send)
