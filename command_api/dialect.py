"""What the write store asks of its database, one implementation per dialect.

PostgreSQL (command_api/pg.py) and SQLite (command_api/sqlite.py) differ in
how they send a batch, not in what they store: both implement `WriteDialect`,
and the store picks one when it is built. Every list passed in is non-empty;
the store sends no statement for nothing.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from command_api.decision import HeadWrite, IdempotencyWrite, StoredAnswer, StreamKey
from command_api.outcomes import OutboxRecord
from eventfold import jsonutil

NaturalKey = tuple[str, str, int]


class WriteDialect(Protocol):
    def commit_concurrency(self, wanted: int) -> int:
        """How many transactions the store may have in flight at once."""
        ...

    async def load_heads(self, conn: AsyncConnection, keys: list[StreamKey]) -> Sequence[Any]:
        """(stream_type, stream_id, version, state) of the streams that exist, in key order."""
        ...

    async def load_idempotency(self, conn: AsyncConnection, keys: list[str]) -> dict[str, StoredAnswer]:
        """The stored answers of those keys that have one."""
        ...

    async def load_outbox(
        self, conn: AsyncConnection, keys: list[StreamKey], skip: Container[NaturalKey]
    ) -> list[OutboxRecord]:
        """Unacknowledged events of these streams, in append order, but for those in `skip`.

        Under load most of them are this process's own, still on their way to
        Kafka (`skip`): their keys are read, not their values and headers.
        """
        ...

    async def outbox_records(self, conn: AsyncConnection, keys: list[NaturalKey]) -> list[OutboxRecord]:
        """The outbox rows of these events that are still there, in append order."""
        ...

    async def insert_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> None: ...

    async def move_heads(self, conn: AsyncConnection, rows: list[HeadWrite], now: float) -> int:
        """Move each head only from its `expected` version; returns how many moved."""
        ...

    async def insert_outbox(self, conn: AsyncConnection, records: list[OutboxRecord], now: float) -> None: ...

    async def insert_idempotency(
        self, conn: AsyncConnection, rows: list[IdempotencyWrite], now: float
    ) -> None: ...

    async def delete_outbox(self, conn: AsyncConnection, keys: list[NaturalKey]) -> None: ...

    async def set_responses(self, conn: AsyncConnection, responses: list[tuple[str, int, bytes]]) -> None:
        """Replace the stored answers of these idempotency keys."""
        ...

    async def reclaim_outbox(self, engine: AsyncEngine) -> str | None:
        """Give the space of cleared outbox rows back for reuse; returns why it cannot, else None."""
        ...


def headers_json(rec: OutboxRecord) -> bytes:
    return jsonutil.dumps([[k, v.decode()] for k, v in rec.headers])


def outbox_record(r: Any) -> OutboxRecord:
    """An outbox row (a mapping) as the record it holds."""
    return OutboxRecord(
        r["stream_type"],
        r["stream_id"],
        r["version"],
        r["topic"],
        bytes(r["value"]),
        [(k, v.encode()) for k, v in jsonutil.loads(r["headers"])],
    )
