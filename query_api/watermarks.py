"""High-watermarks of topics for lag, from fetch responses rather than ListOffsets.

Some brokers (the embedded Tansu) answer ListOffsets "latest" wrongly when
the last batch holds several records, so a short-lived consumer without a
group fetches once per partition, starting at the stored offset (so it reads
little), and reads the high-watermark the fetch response carries. Results
are cached briefly; lag is a gauge, not a promise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from aiokafka import TopicPartition

from eventfold.kafka import new_consumer
from eventfold.settings import KafkaSettings

Watermarks = dict[tuple[str, int], int]


async def fetch_highwaters(
    kafka: KafkaSettings, topics: list[str], start: Mapping[tuple[str, int], int], timeout_s: float
) -> Watermarks:
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10, max_partition_fetch_bytes=1024)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get((tp.topic, tp.partition), 0))
        out: Watermarks = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < len(tps) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=50, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    out[(tp.topic, tp.partition)] = hw
        return out
    finally:
        await consumer.stop()


class WatermarkCache:
    def __init__(self, kafka: KafkaSettings, ttl_s: float = 1.0) -> None:
        self.kafka = kafka
        self.ttl_s = ttl_s
        self._value: Watermarks = {}
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, topics: list[str], start: Mapping[tuple[str, int], int]) -> Watermarks | None:
        """Watermarks of `topics`, or None when Kafka does not answer in time."""
        async with self._lock:
            wanted = set(topics)
            have = {t for t, _ in self._value}
            if time.monotonic() - self._at < self.ttl_s and wanted <= have:
                return self._value
            try:
                self._value = await fetch_highwaters(self.kafka, topics, start, 3.0)
            except Exception:
                return None
            self._at = time.monotonic()
            return self._value
