"""One stream's records, read from its topic: the partition its key maps to, from offset 0.

A stream lives on one partition, chosen by the producers' default
partitioner (murmur2 of the stream id, `eventfold.kafka.partition_for`), so
only that partition is read, up to its high-watermark at the time of the
call. The high-watermark comes from fetch responses, which every broker gets
right. The read is bounded (records scanned and seconds): a partition larger
than that comes back marked `complete: false`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from eventfold.kafka import new_consumer, partition_for, partitions_of, start_consumer
from eventfold.settings import KafkaSettings
from query_api.console.records import shown_bytes, shown_headers
from schemas.mapper import PoisonRecord, decode_value

MAX_SCANNED = 200_000
MAX_SECONDS = 10.0


@dataclass
class StreamRecords:
    topic: str
    partition: int | None  # None: the topic does not exist
    events: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    complete: bool = True


async def read_stream_records(kafka: KafkaSettings, topic: str, stream_id: str) -> StreamRecords:
    """The records keyed `stream_id` in partition order, each decoded (or its poison reason)."""
    key = stream_id.encode()
    consumer = new_consumer(kafka, group_id=None)
    await asyncio.wait_for(start_consumer(consumer), MAX_SECONDS)
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return StreamRecords(topic, None)
        tp = TopicPartition(topic, partition_for(key, len(tps)))
        out = StreamRecords(topic, tp.partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = time.monotonic() + MAX_SECONDS
        next_offset, seen = 0, set[int]()
        while True:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
            for m in batch.get(tp, []):
                next_offset = m.offset + 1
                out.scanned += 1
                if m.key == key:
                    out.events.append(_shown(m, seen))
            hw = consumer.highwater(tp)
            if hw is not None and next_offset >= hw:
                return out
            if out.scanned >= MAX_SCANNED or time.monotonic() > deadline:
                out.complete = False
                return out
    finally:
        await consumer.stop()


def _shown(m: Any, seen: set[int]) -> dict[str, Any]:
    base: dict[str, Any] = {"offset": m.offset, "headers": shown_headers(m.headers)}
    try:
        env = decode_value(m.value)
    except PoisonRecord as exc:
        return {**base, "poison": exc.reason, "detail": exc.detail, "value": shown_bytes(m.value)}
    # A publisher retry can write a version twice; the projector applies the first.
    duplicate = env.version in seen
    seen.add(env.version)
    return {
        **base,
        "version": env.version,
        "type": env.type,
        "schema_version": env.schema_version,
        "event_id": str(env.event_id),
        "occurred_at": env.occurred_at.isoformat(),
        "correlation_id": env.correlation_id,
        "data": env.data,
        "duplicate": duplicate,
    }
