"""Dead letters: poison records copied to `<topic>.dlq` with the reason in headers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from eventfold.kafka import dlq_topic
from eventfold.projection import Projection
from projector.batch import Failure


def dead_letter_headers(projection: str, f: Failure) -> list[tuple[str, bytes]]:
    ours = [
        ("dlq.reason", f.reason.encode()),
        ("dlq.detail", f.detail.encode()[:2000]),
        ("dlq.projection", projection.encode()),
        ("dlq.topic", f.topic.encode()),
        ("dlq.partition", str(f.partition).encode()),
        ("dlq.offset", str(f.offset).encode()),
    ]
    return ours + [(k, v) for k, v in f.headers if not k.startswith("dlq.")]


class DeadLetterSink:
    """Sends and waits for every acknowledgement, so the batch can then commit."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def __call__(self, projection: Projection, failures: Sequence[Failure]) -> None:
        await self.send(projection.name, failures)

    async def send(self, name: str, failures: Sequence[Failure]) -> None:
        """Dead-letter `failures` of the projection or reactor `name`."""
        futures = [
            await self.producer.send(
                dlq_topic(f.topic),
                key=f.key,
                value=f.value,
                headers=dead_letter_headers(name, f),
                partition=f.partition % await self._partitions(dlq_topic(f.topic)),
            )
            for f in failures
        ]
        await asyncio.gather(*futures)

    async def _partitions(self, topic: str) -> int:
        # Same partition as the original when the DLQ has as many; else wrap.
        parts = await self.producer.partitions_for(topic)
        return max(len(parts), 1)
