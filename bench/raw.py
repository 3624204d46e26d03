"""The raw limits of the parts, measured in the same run as eventfold itself.

Each measure does the least work that the corresponding eventfold path must
also do: produce (acks=all, batched), consume and decode JSON, upsert rows in
batches, and serve an HTTP request that does one INSERT. eventfold's figures
are then read as fractions of these.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from eventfold.kafka import create_topics, new_consumer, new_producer, partition_for, partitions_of
from eventfold.settings import KafkaSettings

Progress = Callable[[int], None]

BATCH_RECORDS = 2000
MAX_IN_FLIGHT = 4 * 8  # batches awaited together, across partitions


def sample_values(n: int = 1024) -> list[bytes]:
    """Distinct JSON values of about 200 bytes, shaped like an event."""
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        out.append(
            orjson.dumps(
                {
                    "event_id": str(uuid.uuid4()),
                    "stream_type": "account",
                    "stream_id": f"acc-{i:06d}",
                    "version": i % 50 + 1,
                    "type": "Deposited",
                    "occurred_at": now,
                    "data": {"amount": 100 + i},
                }
            )
        )
    return out


Record = tuple[bytes, bytes, list[tuple[str, bytes]] | None]


async def send_partitioned(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[int, bytes, bytes, list[tuple[str, bytes]] | None]],
    *,
    progress: Progress | None = None,
) -> dict[int, int]:
    """Send (partition, key, value, headers) records in batches; wait for all acks.

    Returns, per partition, the offset after the last record written (the
    high-watermark this producer alone would leave). Records of a partition
    keep their order: one task per partition sends its batches in turn, with
    a few in flight.
    """
    queues: dict[int, asyncio.Queue[list[Record] | None]] = {}
    tasks: dict[int, asyncio.Task[None]] = {}
    ends: dict[int, int] = {}
    failures: list[BaseException] = []
    sent = 0
    ts = int(time.time() * 1000)

    async def settle(items: list[tuple[asyncio.Future[object], int]], partition: int) -> None:
        nonlocal sent
        for fut, n in items:
            meta = await fut
            ends[partition] = max(ends.get(partition, 0), meta.offset + n)  # type: ignore[attr-defined]
            sent += n
            if progress is not None:
                progress(sent)

    async def send(
        partition: int, chunk: list[Record], pending: list[tuple[asyncio.Future[object], int]]
    ) -> None:
        start = 0
        while start < len(chunk):
            batch = producer.create_batch()
            n = 0
            for key, value, headers in chunk[start:]:
                if batch.append(key=key, value=value, timestamp=ts, headers=headers or []) is None:
                    break  # full: send what it holds, the rest goes in the next batch
                n += 1
            if n == 0:
                raise RuntimeError("a record does not fit in an empty batch")
            batch.close()
            pending.append((await producer.send_batch(batch, topic, partition=partition), n))
            start += n
            if len(pending) >= 4:
                await settle(pending[:2], partition)
                del pending[:2]

    async def lane(partition: int, q: asyncio.Queue[list[Record] | None]) -> None:
        pending: list[tuple[asyncio.Future[object], int]] = []
        while (chunk := await q.get()) is not None:
            if failures:
                continue  # keep draining so the feeder never blocks on a dead lane
            try:
                await send(partition, chunk, pending)
            except BaseException as exc:
                failures.append(exc)
        if not failures:
            await settle(pending, partition)

    async def put(partition: int, chunk: list[Record] | None) -> None:
        if partition not in queues:
            queues[partition] = asyncio.Queue(maxsize=8)
            tasks[partition] = asyncio.create_task(lane(partition, queues[partition]))
        await queues[partition].put(chunk)

    buffers: dict[int, list[Record]] = {}
    for partition, key, value, headers in records:
        buf = buffers.setdefault(partition, [])
        buf.append((key, value, headers))
        if len(buf) >= BATCH_RECORDS:
            await put(partition, buf)
            buffers[partition] = []
            await asyncio.sleep(0)  # let the lanes send while we build the next batches
            if failures:
                break
    for partition, buf in buffers.items():
        if buf and not failures:
            await put(partition, buf)
    for partition in list(queues):
        await put(partition, None)
    await asyncio.gather(*tasks.values())
    if failures:
        raise failures[0]
    return ends


async def produce_rate(
    kafka: KafkaSettings, topic: str, n: int, values: Sequence[bytes], progress: Progress | None = None
) -> float:
    """Messages/s for `n` sends of ~200-byte JSON over the topic's partitions.

    The producer is the publisher's (`new_producer` with the run's settings:
    acks=all, idempotent where the broker grants producer ids), so eventfold's
    figures compare with this one like for like.
    """
    keys = [f"acc-{i:06d}".encode() for i in range(len(values))]
    parts = [partition_for(k, kafka.partitions) for k in keys]
    m = len(values)
    records = ((parts[i % m], keys[i % m], values[i % m], None) for i in range(n))
    producer = new_producer(kafka)
    await producer.start()
    try:
        t0 = time.perf_counter()
        await send_partitioned(producer, topic, records, progress=progress)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def consume_rate(kafka: KafkaSettings, topic: str, n: int, progress: Progress | None = None) -> float:
    """Messages/s reading `n` records from offset 0 and `orjson.loads` of each value."""
    consumer = new_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            raise LookupError(f"topic {topic} has no partitions")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        t0 = time.perf_counter()
        seen = 0
        loads = orjson.loads
        deadline = time.monotonic() + 120
        while seen < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for msgs in batches.values():
                for m in msgs:
                    loads(m.value)
                seen += len(msgs)
            if progress is not None:
                progress(seen)
        if seen < n:
            raise RuntimeError(f"read {seen} of {n} records in 120 s")
        return seen / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


UPSERT_TABLE = """
CREATE TABLE IF NOT EXISTS bench_upsert (
    id text PRIMARY KEY,
    owner text NOT NULL,
    balance bigint NOT NULL,
    status text NOT NULL,
    version integer NOT NULL,
    updated_at timestamptz NOT NULL
)"""

UPSERT = """
INSERT INTO bench_upsert AS t (id, owner, balance, status, version, updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE
SET owner = excluded.owner, balance = excluded.balance, status = excluded.status,
    version = excluded.version, updated_at = excluded.updated_at
WHERE t.version < excluded.version"""


def upsert_rows(n: int, streams: int) -> list[tuple[str, str, int, str, int, datetime]]:
    """`n` rows over `streams` ids, each id's versions rising: inserts, then updates."""
    now = datetime.now(UTC)
    return [
        (f"acc-{i % streams:07d}", "owner", 100 * (i // streams + 1), "open", i // streams + 1, now)
        for i in range(n)
    ]


async def upsert_rate(
    conn: object,
    rows: list[tuple[str, str, int, str, int, datetime]],
    batch: int = 1000,
    progress: Progress | None = None,
) -> float:
    """Rows/s upserted by `executemany` batches, one transaction per batch."""
    c = conn  # asyncpg.Connection
    await c.execute(UPSERT_TABLE)  # type: ignore[attr-defined]
    await c.execute("TRUNCATE bench_upsert")  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch):
        async with c.transaction():  # type: ignore[attr-defined]
            await c.executemany(UPSERT, rows[start : start + batch])  # type: ignore[attr-defined]
        if progress is not None:
            progress(min(start + batch, len(rows)))
    return len(rows) / (time.perf_counter() - t0)


async def ensure_topic(kafka: KafkaSettings, topic: str) -> None:
    await create_topics(kafka, [topic])
