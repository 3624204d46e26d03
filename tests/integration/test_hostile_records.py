"""Hostile records on a topic never stop or crash-loop a projector.

Each kind is written straight into Kafka, as a buggy or malicious producer
would, between good events; the good events must all be applied and each bad
record must be dead-lettered with its reason.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from examples.bank.projection import ACCOUNTS
from projector.redrive import retry
from projector.tables import projection_failures
from tests.helpers import read_topic, uid, wait_until
from tests.support.projection import (
    account_events,
    caught_up,
    fast_projector,
    fold_accounts,
    produce,
    produce_envelopes,
    query_client,
    read_tables,
    running_projector,
    stored_offsets,
)


async def test_hostile_records_are_dead_lettered_and_the_rest_applies(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    good = account_events(4, 4, seed=11)
    template = orjson.loads(good[0].model_dump_json())
    whole = orjson.dumps({**template, "version": 50})
    sid = good[0].stream_id.encode()
    hostile = {
        "truncated JSON": (whole[: len(whole) // 2], "not_json"),
        "version as text": (orjson.dumps({**template, "version": "seven"}), "invalid_envelope"),
        "amount as float": (
            orjson.dumps({**template, "type": "Deposited", "version": 60, "data": {"amount": 1.5}}),
            "invalid_data",
        ),
        "huge owner (1 MB)": (
            orjson.dumps(
                {
                    **template,
                    "type": "AccountOpened",
                    "stream_id": "huge",
                    "version": 1,
                    "data": {"owner": "x" * 1_000_000},
                }
            ),
            "invalid_data",
        ),
        "unknown type": (orjson.dumps({**template, "type": "AccountHacked", "version": 70}), "unknown_type"),
        "empty value": (b"", "not_json"),
    }
    await produce(settings.kafka, topic, [(sid, v, []) for v, _ in hostile.values()])
    await produce_envelopes(settings.kafka, topic, good)
    async with running_projector(settings), query_client(settings) as q:
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(own_db.read_db_url, records, topic), timeout=60, what="projector")
        status = (await q.get("/projections")).json()["projections"][0]
        dead = await read_topic(settings.kafka, dlq_topic(topic))
    assert sorted(r.headers["dlq.reason"].decode() for r in dead) == sorted(
        reason for _, reason in hostile.values()
    )
    assert status["dead_letters"] == len(hostile) and status["state"] == "live"
    bad_values = {v for v, _ in hostile.values()}
    assert await read_tables(own_db.read_db_url) == fold_accounts(
        [r for r in records if r.value not in bad_values]
    )


async def failure_rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            stmt = select(projection_failures).order_by(projection_failures.c.offset)
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]
    finally:
        await engine.dispose()


async def test_a_record_the_database_refuses_is_isolated_and_the_batch_applies(
    make_settings, fresh_pg_url: str
) -> None:
    """A NUL in a text column fails PostgreSQL's write of the whole batch: the
    projector bisects it down to that record, dead-letters it with the
    database's reason, applies the rest, and its stream's successors wait as gaps."""
    db = DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url)
    settings = make_settings(db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    good = account_events(8, 4, seed=uuid.uuid4().int % 10**9)
    template = orjson.loads(good[0].model_dump_json())
    bad_id = uid("nul")
    opened = orjson.dumps(
        {
            **template,
            "stream_id": bad_id,
            "version": 1,
            "type": "AccountOpened",
            "data": {"owner": "a\u0000b"},
        }
    )
    deposit = orjson.dumps(
        {
            **template,
            "stream_id": bad_id,
            "version": 2,
            "type": "Deposited",
            "data": {"amount": 5, "reference": "after the poison"},
        }
    )
    # Good events on either side of the bad ones, all fetched before the projector starts.
    await produce_envelopes(settings.kafka, topic, good[: len(good) // 2])
    await produce(settings.kafka, topic, [(bad_id.encode(), opened, []), (bad_id.encode(), deposit, [])])
    await produce_envelopes(settings.kafka, topic, good[len(good) // 2 :])
    async with running_projector(settings), query_client(settings) as q:
        records = await read_topic(settings.kafka, topic)

        await wait_until(lambda: caught_up(db.read_db_url, records, topic), timeout=60, what="projector")
        status = (await q.get("/projections")).json()["projections"][0]
        dead = await read_topic(settings.kafka, dlq_topic(topic))
    assert status["state"] == "live"
    ends = {(topic, r.partition): r.offset + 1 for r in records}
    assert await stored_offsets(db.read_db_url) == ends
    assert await read_tables(db.read_db_url) == fold_accounts(
        [r for r in records if r.key != bad_id.encode()]
    )
    failures = await failure_rows(db.read_db_url)
    first, second = (r.offset for r in records if r.key == bad_id.encode())
    assert [(f["offset"], f["reason"]) for f in failures] == [
        (first, "write_rejected"),
        (second, "version_gap"),
    ]
    assert "0x00" in failures[0]["detail"] and failures[0]["value"] == opened
    assert [(r.value, r.headers["dlq.reason"]) for r in dead] == [(opened, b"write_rejected")]
    # Re-driving them unchanged refuses the same record again and keeps both rows.
    engine = create_engine(db.read_db_url)
    try:
        result = await retry(engine, ACCOUNTS)
    finally:
        await engine.dispose()
    assert (result.retried, result.applied, result.still_failing) == (2, 0, 2)
    again = await failure_rows(db.read_db_url)
    assert [(f["id"], f["reason"]) for f in again] == [(f["id"], f["reason"]) for f in failures]
