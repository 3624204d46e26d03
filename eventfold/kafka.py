"""Kafka clients built from settings, topic creation and the key partitioner.

Broker limits are handled here, through configuration only: the rest of the
code never knows which broker it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from eventfold.settings import KafkaSettings


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner, so every producer agrees."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def new_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "request_timeout_ms": settings.request_timeout_ms,
        "linger_ms": settings.linger_ms,
        "max_batch_size": 1024 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": None,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def new_consumer(settings: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_uncommitted",
        "request_timeout_ms": max(settings.request_timeout_ms, 5000),
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def create_topics(
    settings: KafkaSettings, topics: Iterable[str], *, timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that are missing; returns the names it created.

    Topics get unlimited retention (`retention.ms=-1`): replays read from
    offset 0, so nothing may ever expire. Topics created by other tools need
    the same setting (deploy/README.md).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=settings.partitions,
                            replication_factor=settings.replication_factor,
                            topic_configs={"retention.ms": "-1"},
                        )
                        for t in wanted
                    ]
                )
        return wanted
    finally:
        await admin.close()


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


Watermarks = dict[tuple[str, int], int]


async def fetch_highwaters(
    kafka: KafkaSettings,
    topics: list[str],
    start: Mapping[tuple[str, int], int] | None = None,
    *,
    timeout_s: float,
    require_all: bool = False,
) -> Watermarks:
    """Each partition's high-watermark, read off one fetch response (never ListOffsets).

    Some brokers (the embedded Tansu) answer ListOffsets "latest" wrongly when
    the last batch holds several records; a fetch response carries the right
    value. The fetch starts at `start` (default 0) and reads at most 1 KB.
    With `require_all`, a partition left without one by `timeout_s` raises
    TimeoutError instead of being left out.
    """
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10, max_partition_fetch_bytes=1024)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, (start or {}).get((tp.topic, tp.partition), 0))
        out: Watermarks = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < len(tps) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=50, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    out[(tp.topic, tp.partition)] = hw
        missing = sorted(tp.partition for tp in tps if (tp.topic, tp.partition) not in out)
        if require_all and missing:
            raise TimeoutError(f"no high-watermark for partitions {missing} within {timeout_s}s")
        return out
    finally:
        await consumer.stop()


async def commit_group_offsets(
    kafka: KafkaSettings, group_id: str, offsets: Mapping[tuple[str, int], int], *, timeout_s: float
) -> None:
    """Commit `offsets` for a consumer group from outside it, for lag tools.

    Kafka accepts this only while the group has no active member (otherwise
    CommitFailedError); the members then commit for themselves.
    """
    if not offsets:
        return
    consumer = new_consumer(kafka, group_id=group_id)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        commit = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
        consumer.assign(list(commit))
        # Retriable errors (coordinator moving) are retried inside commit; bound them.
        await asyncio.wait_for(consumer.commit(commit), timeout_s)
    finally:
        await consumer.stop()
