"""Helpers shared by the test tiers: waiting on conditions and reading topics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI

from eventfold.kafka import connection_options, partitions_of
from eventfold.settings import KafkaSettings
from schemas.envelope import EventEnvelope
from schemas.mapper import decode_value

T = TypeVar("T")


def uid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def wait_until(
    check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")
        await asyncio.sleep(interval)


@asynccontextmanager
async def app_client(app: FastAPI, base_url: str = "http://test") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over ASGI with the app's lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60) as client:
            yield client


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def envelope(self) -> EventEnvelope:
        return decode_value(self.value)


async def read_topic(kafka: KafkaSettings, topic: str, *, timeout: float = 20.0) -> list[Record]:
    """Every record of a topic from offset 0 up to the high-watermark at call time.

    The high-watermark comes from fetch responses, which every broker gets
    right (the embedded one answers ListOffsets wrongly for multi-record batches).
    """
    consumer = AIOKafkaConsumer(
        **connection_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        tps = await partitions_of(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        done: set[TopicPartition] = set()
        next_offset: dict[TopicPartition, int] = {tp: 0 for tp in tps}
        while len(done) < len(tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout}s")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(Record(tp.partition, m.offset, m.key, m.value, dict(m.headers)))
                    next_offset[tp] = m.offset + 1
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and next_offset[tp] >= hw:
                    done.add(tp)
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def first_versions(records: list[Record], stream_id: str) -> list[int]:
    """The versions of one stream in partition order, first occurrences only."""
    seen: list[int] = []
    for r in records:
        if r.key == stream_id.encode():
            v = r.envelope().version
            if v not in seen:
                seen.append(v)
    return seen
