"""aiokafka's background routines against a real broker: what ends them, and what eventfold does then.

A write to a connection the broker closed raises RuntimeError on uvloop (the
services' loop), which ended the consumer's fetch routine for good during
broker faults: the consumer then read nothing, silently. eventfold makes that
write a connection error (retried), and a consumer whose routine ended anyway
makes the service exit instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from aiokafka import AIOKafkaConsumer, conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from eventfold import kafka_closed_transport
from eventfold.broker import LocalBrokerLike, broker_kafka_settings
from eventfold.kafka import ConsumerBroken, create_topics, fetch, new_consumer
from eventfold.settings import KafkaSettings
from tests.helpers import uid


class _Ended(asyncio.Protocol):
    """Stands in for aiokafka's protocol, so that it is not told the connection ended."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


def _on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_a_request_written_to_a_closed_connection_on_uvloop_is_a_connection_error(
    kafka_bootstrap: str,
) -> None:
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    kafka_closed_transport.guard()
    kafka_closed_transport.guard()  # idempotent: one wrapper, not two
    guarded = conn.AIOKafkaConnection.send
    unguarded = guarded.__wrapped__  # type: ignore[attr-defined]
    assert not hasattr(unguarded, "__wrapped__")

    async def scenario() -> None:
        for send, raised in ((unguarded, RuntimeError), (guarded, KafkaConnectionError)):
            connection = await conn.create_conn(host, int(port))
            try:
                assert await connection.send(MetadataRequest([]))  # the connection works
                # The connection ends before aiokafka has read the end of the stream.
                assert connection._writer is not None
                transport = connection._writer.transport
                ended = _Ended()
                transport.set_protocol(ended)
                transport.abort()
                await asyncio.wait_for(ended.lost.wait(), 5)
                with pytest.raises(raised, match="closed"):
                    send(connection, MetadataRequest([]))
            finally:
                connection.close()
        # The guarded send closed the connection as aiokafka does on an OSError.
        assert not connection.connected()

    _on_uvloop(scenario)


@pytest.fixture
async def consumer(kafka_bootstrap: str, broker: LocalBrokerLike) -> Any:
    settings = KafkaSettings(**{**broker_kafka_settings(broker), "kafka_bootstrap": kafka_bootstrap})
    topic = f"routines.{uid()}"
    await create_topics(settings, [topic])
    # Short group timeouts, as the services set them (projector/runtime.py): with
    # aiokafka's defaults the first join took minutes on the embedded broker.
    group = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "rebalance_timeout_ms": 6000}
    c = new_consumer(settings, topic, group_id=f"routines-{uid()}", **group)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.mark.parametrize("routine", ["fetch", "group coordination"])
async def test_a_consumer_whose_routine_ended_is_broken_rather_than_silent(
    consumer: AIOKafkaConsumer, routine: str
) -> None:
    assert await fetch(consumer, timeout_ms=100, max_records=10, what="test") == {}
    owner, name = (
        (consumer._fetcher, "_fetch_task")
        if routine == "fetch"
        else (consumer._coordinator, "_coordination_task")
    )
    task = getattr(owner, name)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # aiokafka alone answers `{}` forever (fetch) or the same error forever (coordination).
    with pytest.raises(ConsumerBroken, match=f"{routine} routine ended"):
        await fetch(consumer, timeout_ms=100, max_records=10, what="test")
