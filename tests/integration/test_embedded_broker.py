"""The embedded broker, as `eventfold dev` configures it, serves a long partition.

Tansu answers a fetch later the more record batches its partition holds, and
a fetch whose wait runs out first comes back empty: with too short a fetch
wait, a consumer of a long partition receives nothing, from its start or at
its end. This fills one partition with 30,000 small batches (what 30,000
commands published one by one leave) and reads it with the consumer
settings the embedded broker gets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition

from bench.tansu_fetch import PER_BATCH, fill
from eventfold.broker import EmbeddedBroker, broker_kafka_settings
from eventfold.kafka import create_topics, new_consumer, new_producer, start_consumer
from eventfold.settings import KafkaSettings
from tests.helpers import wait_until

BATCHES = 30_000
TOPIC = "embedded.long"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_consumer_reads_a_long_partition_from_its_start_and_at_its_end(
    embedded: EmbeddedBroker,
) -> None:
    kafka = KafkaSettings(**broker_kafka_settings(embedded), partitions=1)
    await create_topics(kafka, [TOPIC])
    producer = new_producer(kafka, linger_ms=0)
    await producer.start()
    consumer = new_consumer(kafka, group_id=None)
    try:
        await fill(producer, TOPIC, BATCHES, partitions=1)
        await start_consumer(consumer)
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        total = BATCHES * PER_BATCH
        read = 0

        async def more() -> bool:
            nonlocal read
            got = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
            read += sum(len(records) for records in got.values())
            return read >= total

        await wait_until(more, timeout=120, interval=0, what=f"{total} records read from offset 0")
        assert read == total

        # At the end: a record produced now arrives.
        await producer.send_and_wait(TOPIC, b"new", partition=0)
        arrived: list[bytes] = []

        async def delivered() -> bool:
            got = await consumer.getmany(tp, timeout_ms=500)
            arrived.extend(r.value for records in got.values() for r in records)
            return bool(arrived)

        await wait_until(delivered, timeout=60, interval=0, what="the record produced at the end")
        assert arrived == [b"new"]
    finally:
        await consumer.stop()
        await producer.stop()
