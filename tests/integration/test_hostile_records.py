"""Hostile records on a topic never stop or crash-loop a projector (issue 6).

Each kind is written straight into Kafka, as a buggy or malicious producer
would, between good events; the good events must all be applied and each bad
record must be dead-lettered with its reason.
"""

from __future__ import annotations

import orjson

from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from tests.helpers import read_topic, wait_until
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
