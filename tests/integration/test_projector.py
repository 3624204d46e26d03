"""The projector runtime against the real broker and stores: redelivery, poison,
version gaps, replay and a projection declared only in the tests."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from examples.bank.projection import ACCOUNTS
from projector.replay import replay_projection
from projector.tables import projection_failures, projection_status
from tests.helpers import read_topic, wait_until
from tests.support.projection import (
    account_events,
    caught_up,
    checksum,
    fast_projector,
    fold_accounts,
    produce,
    produce_envelopes,
    query_client,
    read_tables,
    running_projector,
)


async def _setup(make_settings: Any, db: DatabaseSettings) -> Any:
    settings = make_settings(db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    return settings, topic


async def _wait_caught_up(settings: Any, topic: str) -> list[Any]:
    records = await read_topic(settings.kafka, topic)
    await wait_until(lambda: caught_up(settings.db.read_db_url, records, topic), timeout=30, what="projector")
    return records


async def test_redelivered_events_change_nothing(make_settings, own_db: DatabaseSettings) -> None:
    settings, topic = await _setup(make_settings, own_db)
    await produce_envelopes(settings.kafka, topic, account_events(40, 6))
    async with running_projector(settings):
        records = await _wait_caught_up(settings, topic)
        before = await checksum(own_db.read_db_url)
        assert await read_tables(own_db.read_db_url) == fold_accounts(records)
        # Copies of earlier records, as a retried publisher batch would produce.
        await produce(
            settings.kafka,
            topic,
            [(r.key, r.value, list(r.headers.items())) for r in records[::3]],
        )
        await _wait_caught_up(settings, topic)
    assert await checksum(own_db.read_db_url) == before


async def test_poison_records_go_to_the_dlq_and_later_events_apply(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings, topic = await _setup(make_settings, own_db)
    good = account_events(3, 3, seed=5)
    sid = good[0].stream_id.encode()
    envelope = orjson.loads(good[0].model_dump_json())
    poison = {
        "not_json": b"{not json",
        "invalid_envelope": orjson.dumps({"hello": "world"}),
        "unknown_type": orjson.dumps({**envelope, "type": "AccountFrozen", "version": 99}),
        "invalid_data": orjson.dumps(
            {**envelope, "type": "Deposited", "version": 98, "data": {"amount": "lots"}}
        ),
        "unknown_stream_type": orjson.dumps({**envelope, "stream_type": "counter"}),
    }
    await produce(settings.kafka, topic, [(sid, v, [("why", r.encode())]) for r, v in poison.items()])
    await produce_envelopes(settings.kafka, topic, good)
    async with running_projector(settings), query_client(settings) as q:
        records = await _wait_caught_up(settings, topic)
        dead = await read_topic(settings.kafka, dlq_topic(topic))
        projections = (await q.get("/projections")).json()["projections"]
    assert sorted(r.headers["dlq.reason"].decode() for r in dead) == sorted(poison)
    for r in dead:
        assert r.headers["why"] == r.headers["dlq.reason"]
        assert r.value == poison[r.headers["dlq.reason"].decode()]
        assert r.headers["dlq.topic"].decode() == topic
    engine = create_engine(own_db.read_db_url, writer=False)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(projection_failures))).mappings().all()
    finally:
        await engine.dispose()
    assert sorted(r["reason"] for r in rows) == sorted(poison)
    docs, ledger = fold_accounts([r for r in records if r.value not in poison.values()])
    assert await read_tables(own_db.read_db_url) == (docs, ledger)
    assert len(docs) == 3
    [mine] = [p for p in projections if p["name"] == "accounts"]
    assert mine["dead_letters"] == len(poison)
    assert mine["lag"] == 0
    assert mine["events_applied"] == 9


async def test_a_version_gap_is_reported_not_applied(make_settings, own_db: DatabaseSettings) -> None:
    settings, topic = await _setup(make_settings, own_db)
    events = account_events(1, 4, seed=9)
    await produce_envelopes(settings.kafka, topic, [events[0], events[2], events[3]])
    async with running_projector(settings):
        await _wait_caught_up(settings, topic)
    engine = create_engine(own_db.read_db_url, writer=False)
    try:
        async with engine.connect() as conn:
            reasons = (await conn.execute(select(projection_failures.c.reason))).scalars().all()
            status = (
                (
                    await conn.execute(
                        select(projection_status).where(projection_status.c.projection == "accounts")
                    )
                )
                .mappings()
                .one()
            )
    finally:
        await engine.dispose()
    assert reasons == ["version_gap", "version_gap"]
    docs, ledger = await read_tables(own_db.read_db_url)
    assert docs[events[0].stream_id]["version"] == 1 and ledger == []
    assert status["events_applied"] == 1 and status["state"] == "live"


async def test_replay_rebuilds_identical_tables_while_live_projector_pauses(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings, topic = await _setup(make_settings, own_db)
    await produce_envelopes(settings.kafka, topic, account_events(60, 8, seed=3))
    async with running_projector(settings), query_client(settings) as q:
        records = await _wait_caught_up(settings, topic)
        before = await checksum(own_db.read_db_url)
        engine = create_engine(own_db.read_db_url)
        try:
            progress: list[tuple[int, int]] = []
            result = await replay_projection(
                settings, ACCOUNTS, engine, progress=lambda d, t: progress.append((d, t))
            )
        finally:
            await engine.dispose()
        assert result.records == len(records) and progress[-1] == (len(records), len(records))
        assert await checksum(own_db.read_db_url) == before
        # The live projector resumes from the replay's offsets.
        more = account_events(5, 3, seed=4)
        await produce_envelopes(settings.kafka, topic, more)
        records = await _wait_caught_up(settings, topic)
        body = (await q.get("/projections")).json()["projections"][0]
    assert await read_tables(own_db.read_db_url) == fold_accounts(records)
    assert body["state"] == "live" and body["events_applied"] == len(records)
