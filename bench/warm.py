"""Warm the broker before anything is measured.

A JVM broker compiles its hot paths for minutes after it starts. Measured on
this machine, a 3-node Apache Kafka cluster took 1.9 ms of its CPU per
acknowledged single-record send 20 s after it started and 0.5 ms after 150 s,
while the references the figures are divided by (the minimal endpoint, the
raw upserts) use no broker. So the broker is loaded with the command API's
kind of traffic (single records, `acks=all`, several in flight) in windows
until three windows in a row cost the same CPU per send (within 10%), or
the time is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bench.env import cpu_seconds
from eventfold.kafka import create_topics, new_producer
from eventfold.settings import KafkaSettings

IN_FLIGHT = 8
STEADY = 0.10  # three windows in a row within 10% of their median CPU per send


async def warm_broker(
    kafka: KafkaSettings,
    pids: list[int],
    *,
    max_s: float,
    window_s: float,
    min_s: float = 0.0,
    progress: Callable[[float], None] | None = None,
) -> list[dict[str, float]]:
    """Windows of (seconds since start, sends/s, broker µs per send) until the broker is steady."""
    topic = kafka.topic("warmup")
    await create_topics(kafka, [topic])
    producer = new_producer(kafka)
    await producer.start()
    sent = 0
    stop = asyncio.Event()

    async def sender(i: int) -> None:
        nonlocal sent
        while not stop.is_set():
            await producer.send_and_wait(topic, b"x" * 300, partition=i % kafka.partitions)
            sent += 1

    tasks = [asyncio.create_task(sender(i)) for i in range(IN_FLIGHT)]
    windows: list[dict[str, float]] = []
    started = time.perf_counter()
    try:
        while True:
            n0, cpu0, t0 = sent, _cpu(pids), time.perf_counter()
            await asyncio.sleep(window_s)
            if any(t.done() for t in tasks):  # a send failed: say why
                await asyncio.gather(*tasks)
            n, dt = sent - n0, time.perf_counter() - t0
            us = (_cpu(pids) - cpu0) * 1e6 / n if n else float("inf")
            elapsed = time.perf_counter() - started
            windows.append(
                {"at_s": round(elapsed, 1), "sends_per_s": round(n / dt, 1), "us_per_send": round(us, 1)}
            )
            if progress is not None:
                progress(elapsed)
            if elapsed >= max_s or (elapsed >= min_s and _steady([w["us_per_send"] for w in windows[-3:]])):
                return windows
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()


def _steady(last: list[float]) -> bool:
    if len(last) < 3:
        return False
    mid = sorted(last)[1]
    return all(abs(v - mid) <= STEADY * mid for v in last)


def _cpu(pids: list[int]) -> float:
    return sum(c for c in map(cpu_seconds, pids) if c is not None)
