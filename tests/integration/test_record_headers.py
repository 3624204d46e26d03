"""Published records carry their envelope fields and CloudEvents attributes as headers.

Both ways a record reaches Kafka: sent by the command API right after its
commit, and relayed later from the outbox (headers stored as JSON).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import orjson

from command_api.outcomes import PendingCommand
from command_api.store import WriteStore
from eventfold.db import create_engine
from eventfold.kafka import asyncapi_cluster
from eventfold.settings import DatabaseSettings, KafkaSettings
from examples.bank.contracts import ACCOUNT, OpenAccount
from schemas.asyncapi import document
from tests.helpers import Record, read_topic, uid, wait_until
from tests.support.bank import bank, default_aggregates

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def assert_event_headers(record: Record, kafka: KafkaSettings) -> None:
    env = record.envelope()
    h = record.headers
    assert h["content-type"] == b"application/json"
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_id"] == h["event_id"] == str(env.event_id).encode()
    assert h["ce_type"] == f"account.{env.type}".encode()
    assert h["ce_source"] == b"eventfold/account"
    assert h["ce_subject"] == h["stream_id"] == record.key == env.stream_id.encode()
    assert h["ce_time"].decode() == orjson.loads(record.value or b"")["occurred_at"]
    assert datetime.fromisoformat(h["ce_time"].decode()) == env.occurred_at
    # The envelope's own headers stay.
    assert (h["stream_type"], h["type"]) == (b"account", env.type.encode())
    assert (h["version"], h["schema_version"]) == (
        str(env.version).encode(),
        str(env.schema_version).encode(),
    )
    # Every header is one the AsyncAPI document describes, with the value it pins.
    doc = document([ACCOUNT], asyncapi_cluster(kafka), version="x", schema_root=bank.schema_dir)
    described = doc["components"]["schemas"]["EventHeaders"]
    assert set(h) <= set(described["properties"]) and set(described["required"]) <= set(h)
    message = doc["components"]["messages"][f"account.{env.type}.v{env.schema_version}"]
    for name, spec in message["headers"]["allOf"][1]["properties"].items():
        assert h[name] == spec["const"].encode(), name


async def test_records_sent_after_commit_carry_cloudevents_headers(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid = uid("acct")
    async with command_client(settings) as http:
        for type_, data, headers in [
            ("OpenAccount", {"owner": "Ann"}, {"x-correlation-id": "order-9", "traceparent": TRACE}),
            ("Deposit", {"amount": 5, "reference": "r"}, {}),
        ]:
            r = await http.post(
                f"/commands/account/{sid}", json={"type": type_, "data": data}, headers=headers
            )
            assert (r.status_code, r.json()["published"]) == (200, True), r.text
    records = [
        r for r in await read_topic(settings.kafka, settings.kafka.topic("account")) if r.key == sid.encode()
    ]
    assert [r.envelope().type for r in records] == ["AccountOpened", "Deposited"]
    for record in records:
        assert_event_headers(record, settings.kafka)
    opened, deposited = records
    assert (opened.headers["correlation_id"], opened.headers["traceparent"]) == (b"order-9", TRACE.encode())
    assert "traceparent" not in deposited.headers
    assert deposited.headers["ce_type"] == b"account.Deposited"


async def test_records_relayed_from_the_outbox_carry_the_same_headers(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    # Committed by a process that died before sending: only the relay publishes it.
    settings = make_settings(own_db)
    sid = uid("acct")
    engine = create_engine(settings.db.write_db_url)
    try:
        store = WriteStore(engine, default_aggregates(), settings.kafka)
        done = asyncio.get_running_loop().create_future()
        await store.commit(
            [PendingCommand("account", sid, OpenAccount(owner="o"), None, None, uid("cmd"), "c-1", "k", done)]
        )
    finally:
        await engine.dispose()
    topic = settings.kafka.topic("account")
    async with command_client(settings):

        async def relayed() -> list[Record]:
            return [r for r in await read_topic(settings.kafka, topic) if r.key == sid.encode()]

        (record,) = await wait_until(relayed, timeout=30, what="the relay to publish the outbox row")
    assert record.envelope().type == "AccountOpened"
    assert_event_headers(record, settings.kafka)
    assert record.headers["correlation_id"] == b"c-1"


async def test_a_backlog_is_published_whole_whatever_its_headers_weigh(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    # One partition, so the relay hands one lane more records than fit in one
    # producer batch: those that do not fit must wait for the next batch.
    settings = make_settings(own_db, kafka={"partitions": 1})
    ids = [uid("acct") for _ in range(2500)]
    engine = create_engine(settings.db.write_db_url)
    try:
        store = WriteStore(engine, default_aggregates(), settings.kafka)
        loop = asyncio.get_running_loop()
        for start in range(0, len(ids), 500):
            await store.commit(
                [
                    PendingCommand(
                        "account",
                        sid,
                        OpenAccount(owner="o"),
                        None,
                        None,
                        sid,
                        "c",
                        sid,
                        loop.create_future(),
                    )
                    for sid in ids[start : start + 500]
                ]
            )
        assert (await store.outbox_stats())[0] == len(ids)
        async with command_client(settings):

            async def drained() -> bool:
                return (await store.outbox_stats())[0] == 0

            await wait_until(drained, timeout=60, what="the relay to empty the outbox")
    finally:
        await engine.dispose()
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert len({r.key for r in records}) == len(ids)
    assert {r.key for r in records} == {sid.encode() for sid in ids}
    assert_event_headers(records[-1], settings.kafka)


async def test_the_command_api_serves_the_document_the_cli_prints(make_settings) -> None:
    from command_api.bootstrap import create_app
    from eventfold.cli.main import asyncapi_document
    from tests.helpers import app_client

    settings = make_settings()
    async with app_client(create_app(settings, bank.write_side(), bank.schema_dir)) as http:
        served = (await http.get("/asyncapi.json")).json()
    assert served == orjson.loads(asyncapi_document(bank, settings))
    older = served["components"]["schemas"]["account.Deposited.v1"]
    assert older["required"] == ["amount"]  # from the bank's recorded history
    assert served["servers"]["kafka"]["variables"]["bootstrap"]["default"] == settings.kafka.kafka_bootstrap
