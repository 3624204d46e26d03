"""The projector as a process: SIGKILLed at random points, and two sharing a group.

Both tests end with the read tables equal to a fold of the topic and with
`events_applied` equal to the number of events: nothing applied twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from examples.bank.projection import ACCOUNTS
from projector.tables import projection_status
from tests.conftest import create_database, drop_database
from tests.helpers import read_topic, wait_until
from tests.support import processes
from tests.support.projection import (
    account_events,
    caught_up,
    fold_accounts,
    produce_envelopes,
    read_tables,
    stored_offsets,
)


@pytest.fixture
async def own_pg(pg_admin_url: str) -> AsyncIterator[DatabaseSettings]:
    """A PostgreSQL database of the test's own, for both stores."""
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)


async def _account_topic(settings: Any) -> str:
    """The account topic and its dead-letter topic, created; the topic's name."""
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    return topic


async def _applied(url: str) -> int:
    return sum((await stored_offsets(url)).values())


async def _events_applied(url: str) -> int:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        select(projection_status.c.events_applied).where(
                            projection_status.c.projection == "accounts"
                        )
                    )
                ).scalar_one()
            )
    finally:
        await engine.dispose()


async def _assert_exact(settings: Any, url: str, topic: str, total: int) -> None:
    records = await read_topic(settings.kafka, topic)
    assert len(records) == total
    await wait_until(lambda: caught_up(url, records, topic), timeout=30, what="caught up")
    assert await read_tables(url) == fold_accounts(records), await _failures(url)
    assert await _events_applied(url) == total


async def _failures(url: str) -> list[Any]:
    from projector.tables import projection_failures as f

    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(f.c.reason, f.c.partition, f.c.offset, f.c.detail))
            return [tuple(r) for r in rows.all()][:20]
    finally:
        await engine.dispose()


async def test_projector_killed_five_times_applies_exactly_once(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    settings = make_settings(own_pg)
    topic = await _account_topic(settings)
    total = 10_000
    await produce_envelopes(settings.kafka, topic, account_events(500, total // 500, seed=11))
    env = processes.settings_env(
        settings, projector_session_timeout_ms=2000, projector_batch_max=200, projector_poll_ms=50
    )
    log = tmp_path / "projector.log"
    rng = random.Random()
    for threshold in sorted(rng.sample(range(300, total - 300), 5)):
        proc = processes.start(["serve", "projector", "--projection", "accounts"], env, log)
        try:
            await wait_until(
                lambda t=threshold: _reached(own_pg.read_db_url, t),
                timeout=40,
                interval=0.005,
                what=f"{threshold} applied",
            )
            await asyncio.sleep(rng.uniform(0, 0.05))  # land anywhere in the next batch
        finally:
            processes.kill(proc)
    joined = _assignments(log)
    proc = processes.start(["serve", "projector"], env, log)
    try:
        await wait_until(lambda: _async(_assignments(log) > joined), timeout=30, what="rejoin")
        await _assert_exact(settings, own_pg.read_db_url, topic, total)
    finally:
        assert processes.terminate(proc) == 0, log.read_text()[-3000:]


async def _reached(url: str, n: int) -> bool:
    return await _applied(url) >= n


async def test_survivor_takes_over_when_one_of_two_projectors_dies(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    settings = make_settings(own_pg)
    topic = await _account_topic(settings)
    events = account_events(300, 10, seed=12)
    env = processes.settings_env(
        settings, projector_session_timeout_ms=4000, projector_batch_max=100, projector_poll_ms=50
    )
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [processes.start(["serve", "projector"], env, log) for log in logs]
    try:
        # Both members hold partitions before the stream starts.
        await wait_until(lambda: _both_assigned(logs), timeout=30, interval=0.1, what="two members")
        half = len(events) // 2
        await produce_envelopes(settings.kafka, topic, events[:half])
        await wait_until(
            lambda: _reached(own_pg.read_db_url, half // 3),
            timeout=30,
            interval=0.005,
            what="some applied",
        )
        processes.kill(procs[0])
        await produce_envelopes(settings.kafka, topic, events[half:])
        await _assert_exact(settings, own_pg.read_db_url, topic, len(events))
        assert _last_assignment(logs[1]) == settings.kafka.partitions  # the survivor has all
    finally:
        for p in procs:
            if p.poll() is None:
                processes.terminate(p)


async def test_members_joining_and_leaving_mid_backlog_crash_no_other(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    """A rebalance lands while a member writes a batch: it loses partitions mid-write and goes on."""
    settings = make_settings(own_pg)
    topic = await _account_topic(settings)
    # Small batches over a backlog: a member is nearly always writing when a rebalance lands.
    total = 40_000
    await produce_envelopes(settings.kafka, topic, account_events(2_000, total // 2_000, seed=13))
    env = processes.settings_env(
        settings, projector_session_timeout_ms=4000, projector_batch_max=50, projector_poll_ms=50
    )
    first_log = tmp_path / "first.log"
    first = processes.start(["serve", "projector", "--projection", "accounts"], env, first_log)
    try:
        for n in range(3):
            await wait_until(
                lambda t=(n + 1) * 2_000: _reached(own_pg.read_db_url, t), timeout=40, what=f"progress {n}"
            )
            joiner_log = tmp_path / f"joiner-{n}.log"
            joiner = processes.start(["serve", "projector", "--projection", "accounts"], env, joiner_log)
            try:
                # Once the joiner holds partitions, the first member gave them up
                # while it was writing, and was assigned the rest.
                await wait_until(
                    lambda log=joiner_log: _async(_assignments(log) > 0),
                    timeout=30,
                    what="the joiner assigned",
                )
                assert first.poll() is None, first_log.read_text()[-3000:]
            finally:
                assert processes.terminate(joiner) == 0, joiner_log.read_text()[-3000:]
        await _assert_exact(settings, own_pg.read_db_url, topic, total)
        assert first.poll() is None, first_log.read_text()[-3000:]
    finally:
        assert processes.terminate(first) == 0, first_log.read_text()[-3000:]


async def _both_assigned(logs: list[Path]) -> bool:
    return all(_last_assignment(log) == 2 for log in logs)


async def _async(value: bool) -> bool:
    return value


def _assignments(log: Path) -> int:
    return log.read_text().count("assigned=") if log.exists() else 0


def _last_assignment(log: Path) -> int:
    lines = [x for x in log.read_text().splitlines() if "assigned=" in x] if log.exists() else []
    return lines[-1].count("events'") if lines else 0


async def _group_members(settings: Any, group: str) -> tuple[str, int]:
    """The consumer group's state and how many members it has, as the broker reports them."""
    from eventfold.kafka import new_admin

    admin = new_admin(settings.kafka)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        _error, _group, state, _protocol_type, _protocol, members, *_ = response.groups[0]
        return state, len(members)
    finally:
        await admin.close()


def _members_of(pid: int) -> list[int]:
    """The child processes of `pid` (Linux: /proc/<pid>/task/<pid>/children)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


@asynccontextmanager
async def _two_members(
    settings: Any, tmp_path: Path, *, new_session: bool = False
) -> AsyncIterator[tuple[Any, Path, list[int]]]:
    """`eventfold serve projector --processes 2`, once both members are in the group.

    Gives the service's process, its log and the members' pids; on the way
    out, kills whatever of them the test left running.
    """
    env = processes.settings_env(settings, projector_batch_max=200, projector_poll_ms=50)
    log = tmp_path / "projector.log"
    proc = processes.start(["serve", "projector", "--processes", "2"], env, log, new_session=new_session)
    group = ACCOUNTS.group_id(settings.kafka)
    members: list[int] = []

    async def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        members[:] = _members_of(proc.pid)
        state, count = await _group_members(settings, group)
        return len(members) == 2 and state == "Stable" and count == 2

    try:
        await wait_until(ready, timeout=60, interval=0.2, what="two members in one group")
        yield proc, log, members
    finally:
        if proc.poll() is None:
            processes.kill(proc)
        for m in members:
            if _alive(m):
                processes.kill_pid(m)


async def _gone(members: list[int]) -> None:
    await wait_until(lambda: _async(not any(map(_alive, members))), timeout=40, what="the members gone")


async def test_serve_projector_runs_members_of_one_group_that_apply_exactly_once(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    """`--processes 2`: two processes join the group, share the work, and stop with the service."""
    settings = make_settings(own_pg)
    topic = await _account_topic(settings)
    async with _two_members(settings, tmp_path) as (proc, log, members):
        try:
            await produce_envelopes(settings.kafka, topic, account_events(400, 20, seed=14))
            await _assert_exact(settings, own_pg.read_db_url, topic, 8_000)
            assert all(_alive(m) for m in members)
        finally:
            assert processes.terminate(proc) == 0, log.read_text()[-3000:]
        await _gone(members)


async def test_a_member_that_dies_stops_the_service_with_an_error(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    """One member SIGKILLed: the other is stopped and the service exits non-zero, to be restarted whole."""
    settings = make_settings(own_pg)
    await _account_topic(settings)
    async with _two_members(settings, tmp_path) as (proc, log, members):
        processes.kill_pid(members[0])
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == 128 + 9, log.read_text()[-3000:]
        assert not _alive(members[1])


async def test_members_stop_when_the_service_is_killed(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    """SIGKILL to the service's process, which cannot pass it on: its members still stop."""
    settings = make_settings(own_pg)
    await _account_topic(settings)
    async with _two_members(settings, tmp_path) as (proc, log, members):
        processes.kill(proc)
        await _gone(members)
        assert "the parent process is gone" in log.read_text()


async def test_ctrl_c_to_the_whole_process_group_stops_the_service_with_0(
    make_settings, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C reaches the service and its members at once: a clean stop, not a failure."""
    settings = make_settings(own_pg)
    await _account_topic(settings)
    async with _two_members(settings, tmp_path, new_session=True) as (proc, log, members):
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()[-3000:]
        await _gone(members)
