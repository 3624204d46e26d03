"""Reading a whole topic up to its fetch high-watermarks.

The embedded broker answers ListOffsets `latest` wrongly for multi-record
batches, so the end of each partition is the high-watermark of fetch responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from eventfold.kafka import connection_options, partitions_of
from eventfold.settings import KafkaSettings
from schemas.envelope import EventEnvelope
from schemas.mapper import decode_value


@dataclass(frozen=True, slots=True)
class TopicRecord:
    partition: int
    offset: int
    envelope: EventEnvelope


@dataclass(frozen=True, slots=True)
class TopicSnapshot:
    records: list[TopicRecord]  # in (partition, offset) order
    ends: dict[int, int]  # partition -> high-watermark when read


async def read_topic(kafka: KafkaSettings, topic: str, *, timeout_s: float = 120.0) -> TopicSnapshot:
    consumer = AIOKafkaConsumer(
        **connection_options(kafka),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[TopicRecord] = []
        next_offset = {tp: 0 for tp in tps}
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(ends) < len(tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    records.append(TopicRecord(tp.partition, m.offset, decode_value(m.value)))
                    next_offset[tp] = m.offset + 1
            for tp in tps:
                hw = consumer.highwater(tp)
                if tp.partition not in ends and hw is not None and next_offset[tp] >= hw:
                    ends[tp.partition] = hw
                    consumer.pause(tp)
        records.sort(key=lambda r: (r.partition, r.offset))
        return TopicSnapshot(records, ends)
    finally:
        await consumer.stop()
