"""What production Kafka gives: replicated topics, authenticated clients, true end offsets,
and per-stream order through a leader's death with the idempotent producer.

These run on the Apache Kafka cluster only (marker `apache`): the embedded broker has
one node, no SASL listener and no producer ids.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr

from eventfold.apache_kafka import SASL_PASSWORD, SASL_USER, ApacheKafkaCluster
from eventfold.kafka import create_topics, fetch_highwaters, new_admin, new_producer, partition_for
from eventfold.settings import KafkaSettings
from tests.helpers import first_versions, read_topic, uid, wait_until

pytestmark = pytest.mark.apache


async def test_topics_are_replicated_with_two_in_sync_and_kept_forever(make_settings) -> None:
    settings = make_settings()
    topic = settings.kafka.topic("account")
    assert await create_topics(settings.kafka, [topic]) == [topic]
    admin = new_admin(settings.kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        assert len(described["partitions"]) == settings.kafka.partitions
        assert {len(p["replicas"]) for p in described["partitions"]} == {3}
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        values = {c[0]: c[1] for c in configs.resources[0][4]}
        assert values["min.insync.replicas"] == "2"
        assert values["retention.ms"] == "-1"
    finally:
        await admin.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_commands_travel_over_an_authenticated_listener(
    command_client, make_settings, broker: ApacheKafkaCluster, mechanism: str
) -> None:
    sasl = {
        "kafka_bootstrap": broker.sasl_bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": SASL_USER,
        "kafka_sasl_password": SecretStr(SASL_PASSWORD),
    }
    # A generous publish timeout: the first publish also authenticates to each broker.
    settings = make_settings(kafka={**sasl, "publish_timeout_s": 20.0})
    sid = uid("acct")
    async with command_client(settings) as http:
        for type_, data in [("OpenAccount", {"owner": "S"}), ("Deposit", {"amount": 5})]:
            r = await http.post(f"/commands/account/{sid}", json={"type": type_, "data": data})
            assert (r.status_code, r.json()["published"]) == (200, True), r.text
    assert first_versions(await read_topic(settings.kafka, settings.kafka.topic("account")), sid) == [1, 2]


async def test_a_wrong_password_is_refused(make_settings, broker: ApacheKafkaCluster) -> None:
    settings = make_settings(
        kafka={
            "kafka_bootstrap": broker.sasl_bootstrap,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": SASL_USER,
            "kafka_sasl_password": SecretStr("not-the-password"),
        }
    )
    # aiokafka logs the SaslAuthenticationFailed of each broker and gives up bootstrapping.
    with pytest.raises(KafkaConnectionError):
        await create_topics(settings.kafka, [settings.kafka.topic("account")], timeout_s=10)


def test_sasl_without_credentials_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="EVENTFOLD_KAFKA_SASL_USERNAME"):
        KafkaSettings(kafka_security_protocol="SASL_SSL")


async def test_end_offsets_come_from_list_offsets(make_settings) -> None:
    settings = make_settings()
    assert settings.kafka.kafka_highwater_from_fetch is False
    topic = settings.kafka.topic("raw")
    await create_topics(settings.kafka, [topic])
    producer = new_producer(settings.kafka, linger_ms=50)
    await producer.start()
    try:
        # Records sent together land in multi-record batches.
        pending = [await producer.send(topic, b"x", key=f"k{i}".encode()) for i in range(40)]
        sent = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    expected: dict[tuple[str, int], int] = {}
    for md in sent:
        key = (topic, md.partition)
        expected[key] = max(expected.get(key, 0), md.offset + 1)
    ends = await fetch_highwaters(settings.kafka, [topic], timeout_s=10)
    assert {k: v for k, v in ends.items() if v} == expected


async def test_order_holds_when_the_partition_leader_dies(
    command_client, make_settings, broker: ApacheKafkaCluster
) -> None:
    """SIGKILL the leader of a stream's partition mid-burst: every command is acknowledged
    (200, or 202 while a new leader is elected) and the topic holds 1..N in order."""
    settings = make_settings(kafka={"publish_timeout_s": 4.0})
    assert settings.kafka.kafka_idempotence is True
    topic = settings.kafka.topic("account")
    sid = uid("acct")
    partition = partition_for(sid.encode(), settings.kafka.partitions)
    n = 60
    async with command_client(settings) as http:
        r = await http.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "L"}})
        assert r.status_code == 200, r.text
        leader = await _leader(settings.kafka, topic, partition)
        codes: list[int] = []

        async def deposits() -> None:
            for _ in range(n - 1):
                resp = await http.post(
                    f"/commands/account/{sid}", json={"type": "Deposit", "data": {"amount": 1}}, timeout=30
                )
                codes.append(resp.status_code)

        burst = asyncio.create_task(deposits())
        await wait_until(lambda: _ge(codes, 10), timeout=30, what="the burst to start")
        broker.kill(leader)
        try:
            await burst
        finally:
            await asyncio.to_thread(broker.restart, leader)
        assert set(codes) <= {200, 202} and len(codes) == n - 1, codes
        state = (await http.get(f"/streams/account/{sid}")).json()
        assert state["version"] == n and state["state"]["balance"] == n - 1

        async def all_published() -> bool:
            records = await read_topic(settings.kafka, topic)
            return first_versions(records, sid) == list(range(1, n + 1))

        await wait_until(all_published, timeout=60, interval=0.5, what="every version in order")
    records = await read_topic(settings.kafka, topic)
    mine = [r.envelope() for r in records if r.key == sid.encode()]
    # A copy can only be a record written again whole (same event id), never a new event.
    first = {e.version: e.event_id for e in reversed(mine)}
    assert all(first[e.version] == e.event_id for e in mine)


async def _ge(codes: list[int], count: int) -> bool:
    return len(codes) >= count


async def _leader(kafka: KafkaSettings, topic: str, partition: int) -> int:
    admin = new_admin(kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        led: Any = next(p for p in described["partitions"] if p["partition"] == partition)
        return int(led["leader"])
    finally:
        await admin.close()


async def test_a_cluster_id_that_starts_with_a_dash_is_formatted() -> None:
    # A KRaft cluster id is URL-safe base64, so one in 64 starts with "-"; the
    # storage tool must not read it as an option (it printed its usage and the
    # bench's setup failed).
    cluster = ApacheKafkaCluster(nodes=1, heap_mb=256)
    cluster.cluster_id = "-" + cluster.cluster_id[1:]
    try:
        await cluster.astart()
        meta = (cluster.nodes[0].directory / "data" / "meta.properties").read_text()
        assert f"cluster.id={cluster.cluster_id}" in meta
    finally:
        await asyncio.to_thread(cluster.stop)
