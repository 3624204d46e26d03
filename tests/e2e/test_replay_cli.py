"""`eventfold replay` as a process, beside a live projector process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from command_api.tables import streams
from eventfold import jsonutil
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from examples.bank.account import ACCOUNT_AGGREGATE
from tests.conftest import create_database, drop_database
from tests.helpers import read_topic, wait_until
from tests.support import processes
from tests.support.projection import (
    account_events,
    caught_up,
    checksum,
    fold_accounts,
    produce_envelopes,
    read_tables,
)


@pytest.fixture
async def own_pg(pg_admin_url: str) -> AsyncIterator[DatabaseSettings]:
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)


def _eventfold(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventfold.cli", *args],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("workers", ["1", "3"])
async def test_replay_beside_a_live_projector_leaves_identical_tables(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path, workers: str
) -> None:
    """One process or three sharing four partitions: the same tables, counters and offsets."""
    settings = make_settings(own_pg)
    topic = settings.kafka.topic("account")
    url = own_pg.read_db_url
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    await produce_envelopes(settings.kafka, topic, account_events(200, 10, seed=21))
    env = processes.settings_env(settings, projector_session_timeout_ms=2000)
    live = processes.start(["serve", "projector"], env, tmp_path / "projector.log")
    try:
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(url, records, topic), timeout=30, what="projector")
        before = await checksum(url)

        done = await asyncio.to_thread(_eventfold, env, "replay", "accounts", "--workers", workers)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"replayed accounts: {len(records)} records, {len(records)} applied" in done.stderr
        assert await checksum(url) == before
        status = await _status(url)
        assert status == ("live", len(records)), status

        # The live projector resumes after the replay, from the replay's offsets.
        await produce_envelopes(settings.kafka, topic, account_events(20, 4, seed=22))
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(url, records, topic), timeout=30, what="resumed")
        assert await read_tables(url) == fold_accounts(records)
    finally:
        assert processes.terminate(live) == 0


async def _status(url: str) -> tuple[str, int]:
    from projector.tables import projection_status

    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            c = projection_status.c
            row = (
                await conn.execute(select(c.state, c.events_applied).where(c.projection == "accounts"))
            ).one()
    finally:
        await engine.dispose()
    return row[0], int(row[1])


async def test_write_side_replay_refills_stream_heads(make_settings, own_pg: DatabaseSettings) -> None:
    settings = make_settings(own_pg)
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic])
    events = account_events(30, 5, seed=23)
    # A retried publisher batch repeats versions; the first occurrence wins.
    await produce_envelopes(settings.kafka, topic, events + events[:20])
    env = processes.settings_env(settings)
    done = await asyncio.to_thread(_eventfold, env, "replay", "--write-side", "account")
    assert done.returncode == 0, done.stdout + done.stderr

    expected = {}
    for e in sorted(events, key=lambda e: (e.stream_id, e.version)):
        model = ACCOUNT_AGGREGATE.contract.load_event(e.type, e.schema_version, e.data)
        _, state = expected.get(e.stream_id, (0, ACCOUNT_AGGREGATE.initial))
        expected[e.stream_id] = (e.version, ACCOUNT_AGGREGATE.evolve(state, model))
    engine = create_engine(own_pg.write_db_url, writer=False)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(streams))).mappings().all()
    finally:
        await engine.dispose()
    got = {r["stream_id"]: (r["version"], jsonutil.loads(r["state"])) for r in rows}
    assert got == {k: (v, s.model_dump(mode="json")) for k, (v, s) in expected.items()}
