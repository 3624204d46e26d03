"""What happens to a command on its way through the write path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from schemas.base import Command
from schemas.position import Position


@dataclass(slots=True)
class PendingCommand:
    stream_type: str
    stream_id: str
    command: Command
    expected_version: int | None
    idempotency_key: str | None
    request_hash: str
    correlation_id: str
    command_id: str
    future: asyncio.Future[Outcome] = field(repr=False)
    traceparent: str | None = None
    # Set by the service when the command's events are queued for Kafka.
    ticket: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One event ready for Kafka; its natural key is (stream_type, stream_id, version)."""

    stream_type: str
    stream_id: str
    version: int
    topic: str
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def natural_key(self) -> tuple[str, str, int]:
        return (self.stream_type, self.stream_id, self.version)

    @property
    def key(self) -> bytes:
        return self.stream_id.encode()


@dataclass(frozen=True, slots=True)
class Accepted:
    """Committed to the write store; `published` tells whether Kafka acknowledged it."""

    stream_type: str
    stream_id: str
    version: int
    events: list[dict[str, Any]]
    records: list[OutboxRecord]
    position: Position | None = None

    def body(self, *, published: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stream_type": self.stream_type,
            "stream_id": self.stream_id,
            "version": self.version,
            "events": self.events,
            "position": self.position.token() if self.position else None,
            "published": published,
        }
        return body


@dataclass(frozen=True, slots=True)
class Replayed:
    """An idempotent repeat: the first response, stored with the command."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VersionConflict:
    current_version: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A domain rule or an idempotency-key misuse refused the command."""

    code: str
    detail: str
    status: int = 422


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The write store could not make the command durable; nothing was appended."""

    detail: str


Outcome = Accepted | Replayed | VersionConflict | Refused | Unavailable
