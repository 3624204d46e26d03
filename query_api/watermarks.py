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

from eventfold.kafka import Watermarks, fetch_highwaters
from eventfold.settings import KafkaSettings


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
                self._value = await fetch_highwaters(self.kafka, topics, start, timeout_s=3.0)
            except Exception:
                return None
            self._at = time.monotonic()
            return self._value
