"""Kafka clients built from settings, topic creation and the key partitioner.

Broker limits are handled here, through configuration only: the rest of the
code never knows which broker it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from eventfold import kafka_closed_transport
from eventfold.settings import KafkaSettings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from schemas.asyncapi import Cluster


@functools.lru_cache(maxsize=16_384)
def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner, so every producer agrees.

    aiokafka's murmur2 is pure Python (about 2 µs a key) and a stream's key
    comes back with each of its events, so recent answers are kept.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap servers and security: what every client (producer, consumer, admin) needs."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # the settings validator saw to it
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def new_admin(settings: KafkaSettings, **overrides: Any) -> AIOKafkaAdminClient:
    kafka_closed_transport.guard()
    options = {**connection_options(settings), "request_timeout_ms": 10_000, **overrides}
    return AIOKafkaAdminClient(**options)


def new_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    kafka_closed_transport.guard()
    options: dict[str, Any] = {
        **connection_options(settings),
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
    kafka_closed_transport.guard()
    options: dict[str, Any] = {
        **connection_options(settings),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_uncommitted",
        "request_timeout_ms": max(settings.request_timeout_ms, 5000),
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


# Fetch sizes for consumers that act on each event (process managers,
# reactors) rather than folding batches: after an outage the backlog arrives
# in small fetches instead of 16 MB ones held in memory while it is worked off.
EFFECT_FETCH = {"fetch_max_bytes": 1024 * 1024, "max_partition_fetch_bytes": 256 * 1024}


async def start_consumer(consumer: AIOKafkaConsumer) -> None:
    """Start a consumer; one that fails to start is closed, not left for the collector."""
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise


async def create_topics(
    settings: KafkaSettings, topics: Iterable[str], *, timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that are missing; returns the names it created.

    Topics get unlimited retention (`retention.ms=-1`): replays read from
    offset 0, so nothing may ever expire. Unless configured, the replication
    factor is min(3, brokers) and `min.insync.replicas` min(2, RF): with
    acks=all an acknowledged event is on two brokers before the command API
    counts it published. Topics created by other tools need the same settings
    (deploy/README.md).
    """
    admin = new_admin(settings)
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        if wanted:
            rf, isr = await replication(admin, settings)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=settings.partitions,
                            replication_factor=rf,
                            topic_configs={"retention.ms": "-1", "min.insync.replicas": str(isr)},
                        )
                        for t in wanted
                    ]
                )
            await _until_led(admin, wanted, timeout_s)
        return wanted
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    """Wait until every partition of these new topics has a leader.

    A multi-broker cluster answers CreateTopics before the new partitions are
    led and their metadata has reached every broker; clients that start at
    once would otherwise see the topic missing.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        if len(described) == len(topics) and all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {topics} had no leaders after {timeout_s}s")
        await asyncio.sleep(0.1)


async def replication(admin: AIOKafkaAdminClient, settings: KafkaSettings) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics on this cluster."""
    rf = settings.replication_factor
    if rf is None:
        brokers = len((await admin.describe_cluster())["brokers"])
        rf = min(3, max(1, brokers))
    return rf, settings.min_insync_replicas or min(2, rf)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from a metadata request for all topics.

    `partitions_for_topic` only knows topics the consumer subscribed to or was
    assigned (Kafka answers a metadata request for no topics with none), so
    callers about to `assign` ask the cluster itself.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def asyncapi_cluster(settings: KafkaSettings) -> Cluster:
    """What the AsyncAPI document says about this cluster: its topics, and how they are made."""
    from schemas.asyncapi import Cluster

    return Cluster(
        bootstrap=settings.kafka_bootstrap,
        topic_of=settings.topic,
        dead_letters_of=dlq_topic,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        client_certificate=settings.kafka_ssl_certfile is not None,
    )


Watermarks = dict[tuple[str, int], int]


async def fetch_highwaters(
    kafka: KafkaSettings,
    topics: list[str],
    start: Mapping[tuple[str, int], int] | None = None,
    *,
    timeout_s: float,
    require_all: bool = False,
) -> Watermarks:
    """Each partition's high-watermark (the offset the next record will get).

    ListOffsets "latest" by default. With `kafka_highwater_from_fetch` (brokers
    such as the embedded Tansu, which answer ListOffsets wrongly when the last
    batch holds several records) the value is read off one fetch response
    instead, starting at `start` (default 0) and reading at most 1 KB.
    With `require_all`, a partition left without one by `timeout_s` raises
    TimeoutError instead of being left out.
    """
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10, max_partition_fetch_bytes=1024)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        tps = [tp for t in topics for tp in await partitions_of(consumer, t)]
        if require_all and not tps:
            raise LookupError(f"no partitions found for {', '.join(topics)}: do the topics exist?")
        if not kafka.kafka_highwater_from_fetch:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), timeout_s) if tps else {}
            return {(tp.topic, tp.partition): int(off) for tp, off in ends.items()}
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


class ConsumerBroken(RuntimeError):
    """A consumer's background fetch or group routine ended while the consumer is open.

    aiokafka does not start them again and its `getmany` then returns nothing
    (or the same error) forever, so fetching on would hang in silence. The
    service exits instead, and whatever runs it starts it again.
    """


def raise_if_broken(consumer: AIOKafkaConsumer, what: str) -> None:
    """`ConsumerBroken` if one of the consumer's background routines ended while it is open.

    aiokafka keeps them private; tests/integration/test_kafka_routines.py
    checks these names against the installed version.
    """
    if getattr(consumer, "_closed", True):
        return
    routines = (
        ("fetch", getattr(getattr(consumer, "_fetcher", None), "_fetch_task", None)),
        ("group coordination", getattr(getattr(consumer, "_coordinator", None), "_coordination_task", None)),
    )
    for name, task in routines:
        if task is not None and task.done():
            raise ConsumerBroken(f"{what}: the Kafka consumer's {name} routine ended; restart the service")


async def fetch(consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int, what: str) -> Any:
    """One `getmany`, or None when the consumer failed on the way to a broker.

    While a broker dies, aiokafka can raise from a fetch (a connection error)
    instead of retrying it. The caller then seeks back to its stored offsets
    and fetches again; it must not exit. If a background routine of the
    consumer has ended, no fetch can succeed again: `ConsumerBroken`.
    """
    raise_if_broken(consumer, what)
    try:
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    except (KafkaError, OSError, RuntimeError) as exc:
        log.warning("%s: fetch failed; seeking to the stored offsets and fetching again: %r", what, exc)
        return None
