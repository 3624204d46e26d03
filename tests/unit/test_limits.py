"""The body-limit middleware drains a refused body within its bound, and closes past it."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from eventfold.limits import BodySizeLimit

CHUNK = 1024


def _request(chunks: int, *, content_length: bool) -> tuple[Scope, Receive, list[int]]:
    headers = [(b"content-type", b"application/json")]
    if content_length:
        headers.append((b"content-length", str(chunks * CHUNK).encode()))
    scope: Scope = {"type": "http", "method": "POST", "path": "/commands/a/b", "headers": headers}
    read = [0]

    async def receive() -> Message:
        if read[0] >= chunks:
            return {"type": "http.disconnect"}
        read[0] += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": read[0] < chunks}

    return scope, receive, read


async def _reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    raise AssertionError("the app must not see a body over the limit")


async def _run(app: BodySizeLimit, scope: Scope, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _headers(sent: list[Message]) -> dict[bytes, bytes]:
    return dict(sent[0]["headers"])


async def test_a_refused_body_within_the_bound_is_read_to_its_end_before_the_answer() -> None:
    for content_length in (True, False):
        app = BodySizeLimit(_reads_everything, max_bytes=4 * CHUNK, drain_bytes=64 * CHUNK)
        scope, receive, read = _request(40, content_length=content_length)
        sent = await _run(app, scope, receive)
        assert sent[0]["status"] == 413
        assert read[0] == 40, content_length
        assert b"connection" not in _headers(sent)  # the connection is clean and stays open


async def test_a_refused_body_past_the_bound_is_answered_with_connection_close() -> None:
    for content_length in (True, False):
        app = BodySizeLimit(_reads_everything, max_bytes=4 * CHUNK, drain_bytes=8 * CHUNK)
        scope, receive, read = _request(40, content_length=content_length)
        sent = await _run(app, scope, receive)
        assert sent[0]["status"] == 413
        assert read[0] < 40, content_length
        assert _headers(sent)[b"connection"] == b"close"
