"""`eventfold replay` never leaves a projection empty or paused, and leaves Kafka's lag tools right.

A replay that cannot start changes nothing; one interrupted or killed midway
leaves the rows served before it readable and the live projector running
again; one that finishes leaves the projection's consumer group committed at
the partition ends.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.broker import free_port
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic, fetch_highwaters
from eventfold.settings import DatabaseSettings, Settings
from examples.bank.projection import ACCOUNTS
from projector.tables import projection_offsets, projection_status
from tests.helpers import read_topic, wait_until
from tests.support import processes
from tests.support.projection import (
    account_events,
    caught_up,
    checksum,
    fast_projector,
    fold_accounts,
    produce_envelopes,
    read_tables,
    running_projector,
)


def _eventfold(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventfold.cli", *args],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _bookkeeping(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every offsets row and the projection's status (state, counters, generation)."""
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            o, s = projection_offsets.c, projection_status.c
            offsets = (
                await conn.execute(
                    select(o.projection, o.topic, o.partition, o.next_offset).order_by(o.topic, o.partition)
                )
            ).all()
            status = (
                await conn.execute(
                    select(s.projection, s.state, s.events_applied, s.last_event_at, s.generation, s.version)
                )
            ).all()
    finally:
        await engine.dispose()
    return [tuple(r) for r in offsets], sorted(tuple(r) for r in status)


async def _state(url: str) -> str | None:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            c = projection_status.c
            return (await conn.execute(select(c.state).where(c.projection == "accounts"))).scalar()
    finally:
        await engine.dispose()


async def _projected(settings: Settings, seed: int, accounts: int = 40, per: int = 10) -> list[Any]:
    """Produce a workload and let a live projector catch up on it; returns the topic's records."""
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    await produce_envelopes(settings.kafka, topic, account_events(accounts, per, seed=seed))
    records = await read_topic(settings.kafka, topic)
    async with running_projector(settings, [ACCOUNTS]):
        await wait_until(
            lambda: caught_up(settings.db.read_db_url, records, topic), timeout=60, what="projector"
        )
    return records


async def test_replay_that_cannot_reach_kafka_changes_nothing(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    await _projected(settings, seed=31)
    url = own_db.read_db_url
    rows, bookkeeping = await checksum(url), await _bookkeeping(url)

    env = processes.settings_env(settings)
    env["EVENTFOLD_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = await asyncio.to_thread(_eventfold, env, "replay", "accounts")

    assert done.returncode != 0, done.stdout + done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ") and "Kafka" in message, message
    assert await checksum(url) == rows
    assert await _bookkeeping(url) == bookkeeping


async def _replayed_so_far(engine: AsyncEngine, name: str) -> tuple[str | None, int]:
    """The projection's state and how many records the replay's own generation has stored."""
    o, s = projection_offsets.c, projection_status.c
    async with engine.connect() as conn:
        state = (await conn.execute(select(s.state).where(s.projection == name))).scalar()
        stored = (
            await conn.execute(select(func.sum(o.next_offset)).where(o.projection.like(f"{name}@%")))
        ).scalar()
    return state, int(stored or 0)


async def _interrupted_replay(
    settings: Settings, env: dict[str, str], sig: int, records: int, command: str = "replay"
) -> tuple[int, str]:
    """Start a replay (or a rebuild), wait until it has written some but not half of its
    `records`, then send `sig`.

    Returns its exit code and what it printed.
    """
    engine = create_engine(settings.db.read_db_url, writer=False)
    # A replay pauses the live projection; a rebuild builds beside it.
    pausing = command == "replay"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventfold.cli",
        command,
        "accounts",
        cwd=processes.ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )

    async def midway() -> bool:
        if proc.returncode is not None:
            raise AssertionError("the replay ended before it could be interrupted")
        state, stored = await _replayed_so_far(engine, "accounts")
        if stored >= records // 2:
            raise AssertionError(f"the replay was past half ({stored} of {records}) when first seen")
        return (state == "rebuilding" or not pausing) and stored > 0

    try:
        await wait_until(midway, timeout=60, interval=0.01, what=f"the {command} to be under way")
    finally:
        if proc.returncode is None:
            proc.send_signal(sig)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        await engine.dispose()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_interrupted_replay_restores_what_was_served(
    make_settings, own_db: DatabaseSettings, sig: signal.Signals
) -> None:
    """Ctrl-C or a service manager's SIGTERM midway: the old rows, offsets and status are back,
    the replay says so in one line, and live consumption goes on."""
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    total = len(await _projected(settings, seed=32, accounts=100, per=30))
    url = own_db.read_db_url
    rows, bookkeeping = await checksum(url), await _bookkeeping(url)
    # One-record replay batches make the replay long enough to interrupt midway.
    env = processes.settings_env(settings, projector_replay_batch_max=1)

    code, out = await _interrupted_replay(settings, env, sig, total)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: replay of accounts stopped by " + sig.name), out
    assert "undone" in last, out
    assert await checksum(url) == rows
    assert await _bookkeeping(url) == bookkeeping, out

    async with running_projector(settings, [ACCOUNTS]):
        await produce_envelopes(settings.kafka, topic, account_events(5, 3, seed=33))
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(url, records, topic), timeout=60, what="live consumption")
    assert await read_tables(url) == fold_accounts(records)


async def test_a_rebuild_stopped_by_sigterm_drops_its_generation_and_the_old_one_serves(
    make_settings, own_pg: DatabaseSettings
) -> None:
    """A service manager stopping `eventfold rebuild` midway: the live tables never notice."""
    db = own_pg
    settings = make_settings(db, projector=fast_projector())
    total = len(await _projected(settings, seed=37, accounts=100, per=30))
    url = db.read_db_url
    rows, bookkeeping = await checksum(url), await _bookkeeping(url)
    env = processes.settings_env(settings, projector_replay_batch_max=1)

    code, out = await _interrupted_replay(settings, env, signal.SIGTERM, total, command="rebuild")
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: rebuild of accounts stopped by SIGTERM"), out
    assert await checksum(url) == rows
    assert await _bookkeeping(url) == bookkeeping, out
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    assert not [n for n in names if "__g" in n], names


async def test_killed_replay_serves_the_old_rows_and_the_live_projector_takes_over(
    make_settings, own_db: DatabaseSettings
) -> None:
    """SIGKILL midway: nothing can clean up, yet reads keep their rows and the pause ends."""
    lease = 3.0
    settings = make_settings(own_db, projector=fast_projector(projector_replay_lease_s=lease))
    topic = settings.kafka.topic("account")
    total = len(await _projected(settings, seed=34, accounts=100, per=30))
    url = own_db.read_db_url
    rows = await checksum(url)
    env = processes.settings_env(settings, projector_replay_batch_max=1, projector_replay_lease_s=lease)

    async with running_projector(settings, [ACCOUNTS]):
        code, err = await _interrupted_replay(settings, env, signal.SIGKILL, total)
        assert code == -signal.SIGKILL, err
        assert await checksum(url) == rows

        # The abandoned claim runs out and the live projector resumes.
        await produce_envelopes(settings.kafka, topic, account_events(5, 3, seed=35))
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(url, records, topic), timeout=60, what="the live projector")
        assert await _state(url) == "live"
    assert await read_tables(url) == fold_accounts(records)

    # The next replay clears what the killed one left behind.
    env = processes.settings_env(settings, projector_replay_lease_s=lease)
    done = await asyncio.to_thread(_eventfold, env, "replay", "accounts")
    assert done.returncode == 0, done.stdout + done.stderr
    assert await read_tables(url) == fold_accounts(records)


async def _committed(settings: Settings, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def _ends(settings: Settings) -> dict[int, int]:
    topic = settings.kafka.topic("account")
    ends = await fetch_highwaters(settings.kafka, [topic], timeout_s=20)
    return {p: o for (_, p), o in ends.items()}


async def test_replay_commits_the_stored_offsets_to_the_consumer_group(
    make_settings, own_db: DatabaseSettings
) -> None:
    """No live projector: the group is empty, so the replay commits the partition ends itself."""
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    await produce_envelopes(settings.kafka, topic, account_events(40, 5, seed=36))
    done = await asyncio.to_thread(_eventfold, processes.settings_env(settings), "replay", "accounts")
    assert done.returncode == 0, done.stdout + done.stderr

    ends = await _ends(settings)
    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    assert await _committed(settings, ACCOUNTS.group_id(settings.kafka), tps) == ends


async def test_rebuild_commits_the_stored_offsets_to_the_consumer_group(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    await produce_envelopes(settings.kafka, topic, account_events(40, 5, seed=40))
    done = await asyncio.to_thread(_eventfold, processes.settings_env(settings), "rebuild", "accounts")
    assert done.returncode == 0, done.stdout + done.stderr

    ends = await _ends(settings)
    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    assert await _committed(settings, ACCOUNTS.group_id(settings.kafka), tps) == ends


async def _commit_as_member(settings: Settings, group: str, topic: str, offset: int) -> None:
    """Join the group and commit `offset` on every partition, as an older deployment might have."""
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=2000,
    )
    await consumer.start()
    try:

        async def assigned() -> bool:
            await consumer.getmany(timeout_ms=100)
            return bool(consumer.assignment())

        await wait_until(assigned, timeout=60, what="an assignment")
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp in consumer.assignment()})
    finally:
        await consumer.stop()


async def test_live_projector_commits_the_stored_offsets_on_assignment(
    make_settings, own_db: DatabaseSettings
) -> None:
    """A group left behind (say, before a replay with no projector running) is corrected
    as soon as a live projector joins, even if no new event ever arrives."""
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    group = ACCOUNTS.group_id(settings.kafka)
    await _projected(settings, seed=39)
    ends = await _ends(settings)
    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    await wait_until(lambda: _group_at(settings, group, tps, ends), timeout=30, what="live group commits")
    await _commit_as_member(settings, group, topic, 1)
    assert await _committed(settings, group, tps) == {tp.partition: 1 for tp in tps}

    async with running_projector(settings, [ACCOUNTS]):
        await wait_until(
            lambda: _group_at(settings, group, tps, ends), timeout=30, what="commits on assignment"
        )


async def _group_at(settings: Settings, group: str, tps: list[TopicPartition], ends: dict[int, int]) -> bool:
    return await _committed(settings, group, tps) == ends


async def test_group_offsets_are_at_the_ends_after_a_replay_beside_a_live_projector(
    make_settings, own_db: DatabaseSettings, tmp_path: Path
) -> None:
    """The group has a member while the replay finishes: the live projector commits what the replay stored."""
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    group = ACCOUNTS.group_id(settings.kafka)
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    url = own_db.read_db_url
    env = processes.settings_env(settings, projector_session_timeout_ms=2000)
    live = processes.start(
        ["serve", "projector", "--projection", "accounts"], env, tmp_path / "projector.log"
    )
    try:
        await produce_envelopes(settings.kafka, topic, account_events(40, 5, seed=37))
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(url, records, topic), timeout=60, what="projector")
        done = await asyncio.to_thread(_eventfold, env, "replay", "accounts")
        assert done.returncode == 0, done.stdout + done.stderr
        ends = await _ends(settings)
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        await wait_until(
            lambda: _group_at(settings, group, tps, ends), timeout=30, what="group commits after the replay"
        )
    finally:
        assert processes.terminate(live) == 0
