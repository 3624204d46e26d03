"""aiokafka on uvloop: a request written to a connection the broker closed is a broken connection.

aiokafka turns an `OSError` from writing a request into
`KafkaConnectionError`, which its background routines retry (asyncio's own
transports never raise there: they drop the write and report the loss).
uvloop's transports raise `RuntimeError("unable to perform operation on
<TCPTransport closed=True ...>; the handler is closed")` instead, when the
broker's side went away before aiokafka saw the end of the stream. That
error escapes the consumer's fetch routine or group coordination routine and
ends it for good: the consumer then fetches nothing, silently, until the
process restarts (aio-libs/aiokafka#1038). The services run on uvloop
(`eventfold.runner.run_fast`), and a dying broker does exactly this.

`guard()` makes the connection's `send` treat that error as aiokafka treats
an `OSError`: the connection is closed and the request fails with
`KafkaConnectionError`, which every routine already retries.
"""

from __future__ import annotations

import functools
from typing import Any

from aiokafka import conn
from aiokafka.errors import KafkaConnectionError

_GUARDED = "_eventfold_closed_transport_guard"


def guard() -> None:
    """Install the guard on `aiokafka.conn.AIOKafkaConnection.send` (once; idempotent)."""
    send = conn.AIOKafkaConnection.send
    if getattr(send, _GUARDED, False):
        return

    @functools.wraps(send)
    def guarded_send(self: conn.AIOKafkaConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return send(self, *args, **kwargs)
        except RuntimeError as err:
            if "closed" not in str(err):
                raise
            self.close(reason=conn.CloseReason.CONNECTION_BROKEN)
            raise KafkaConnectionError(f"Connection at {self._host}:{self._port} broken: {err}") from err

    setattr(guarded_send, _GUARDED, True)
    conn.AIOKafkaConnection.send = guarded_send
