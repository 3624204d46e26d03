"""How fast the embedded broker serves a long partition, by fetch wait.

`python -m bench.tansu_fetch [BATCHES ...] [--waits 10,50,100]`: for each
size, a fresh Tansu gets one topic of 4 partitions, each filled with BATCHES
batches of 5 records of 200 bytes (what commands published one by one
leave); then a consumer per fetch wait reads all of it from offset 0, for at
most 15 s, and the records per second it got are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from eventfold.broker import EmbeddedBroker, broker_kafka_settings
from eventfold.kafka import create_topics, new_producer
from eventfold.settings import KafkaSettings

TOPIC = "probe.events"
PARTITIONS = 4
PER_BATCH = 5


async def fill(producer: AIOKafkaProducer, topic: str, batches: int, partitions: int) -> None:
    """`batches` batches of PER_BATCH records in each partition, one produce request each."""
    pending = []
    for i in range(batches * partitions):
        batch = producer.create_batch()
        for _ in range(PER_BATCH):
            batch.append(key=None, value=b"x" * 200, timestamp=None)
        batch.close()
        pending.append(await producer.send_batch(batch, topic, partition=i % partitions))
        if len(pending) >= 200:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def read_all(bootstrap: str, wait_ms: int, total: int, limit_s: float = 15.0) -> tuple[int, float]:
    """Records read from offset 0 within `limit_s`, and the seconds it took."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=16 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        start, read = time.perf_counter(), 0
        while read < total and time.perf_counter() - start < limit_s:
            got = await consumer.getmany(timeout_ms=500, max_records=5000)
            read += sum(len(records) for records in got.values())
        return read, time.perf_counter() - start
    finally:
        await consumer.stop()


async def main(sizes: list[int], waits: list[int]) -> None:
    for batches in sizes:
        with EmbeddedBroker() as broker:
            kafka = KafkaSettings(**broker_kafka_settings(broker), partitions=PARTITIONS)
            await create_topics(kafka, [TOPIC])
            producer = new_producer(kafka, linger_ms=0)
            await producer.start()
            try:
                await fill(producer, TOPIC, batches, PARTITIONS)
            finally:
                await producer.stop()
            total = batches * PARTITIONS * PER_BATCH
            for wait in waits:
                read, seconds = await read_all(broker.bootstrap, wait, total)
                print(
                    f"{batches:>7,} batches per partition, fetch wait {wait:>4} ms: "
                    f"{read / seconds:>9,.0f} records/s ({read:,} of {total:,} in {seconds:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[5_000, 15_000, 30_000, 60_000])
    parser.add_argument("--waits", default="10,50,100", help="fetch waits in ms, comma-separated")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, [int(w) for w in args.waits.split(",")]))
