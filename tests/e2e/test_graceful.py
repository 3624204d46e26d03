"""Graceful behaviour: SIGTERM finishes the work in hand; /readyz names what is down."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from command_api.tables import outbox
from eventfold.broker import broker_kafka_settings
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from projector.tables import projection_status
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import first_versions, read_topic, uid, wait_until
from tests.support import processes
from tests.support.projection import (
    account_events,
    caught_up,
    fold_accounts,
    produce_envelopes,
    read_tables,
    stored_offsets,
)

# Kubernetes' default terminationGracePeriodSeconds (deploy/k8s keeps it). With the broker
# frozen, shutdown takes about 10 s: the Kafka producer's close waits for its unsent batches.
GRACE_S = 30


def _frozen_broker_settings(make_settings: Any, broker: Any, db: DatabaseSettings) -> Any:
    # The session's local broker, which can be frozen (even in Docker mode). A long publish
    # timeout keeps the burst in flight well past the SIGTERM, even on a slow machine.
    return make_settings(db, kafka={**broker_kafka_settings(broker), "publish_timeout_s": 8.0})


async def _in_outbox(url: str, sids: list[str], version: int) -> int:
    """How many of these streams have `version` committed and not yet acknowledged by Kafka."""
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            stmt = select(func.count()).where(outbox.c.stream_id.in_(sids), outbox.c.version == version)
            return int((await conn.execute(stmt)).scalar_one())
    finally:
        await engine.dispose()


async def test_sigterm_lets_in_flight_commands_finish(
    make_settings: Any, broker: Any, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    settings = _frozen_broker_settings(make_settings, broker, own_pg)
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic])
    api = await started(settings, "command-api", log=tmp_path / "api.log")
    sids = [uid("grace") for _ in range(20)]
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        for sid in sids:
            r = await http.post(
                f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "G"}}
            )
            assert r.status_code == 200, r.text
        # With the broker frozen every command commits, then waits for Kafka: in flight for seconds.
        broker.pause()
        try:
            burst = [
                asyncio.create_task(
                    http.post(f"/commands/account/{sid}", json={"type": "Deposit", "data": {"amount": 7}})
                )
                for sid in sids
            ]
            await wait_until(
                lambda: _async(_in_outbox(own_pg.write_db_url, sids, 2), len(sids)),
                timeout=15,
                what="the burst committed and waiting for Kafka",
            )
            assert not any(t.done() for t in burst)
            api.kill(signal.SIGTERM)
            began = time.monotonic()
            answers = await asyncio.gather(*burst)
            code = await api.wait_exit(timeout=GRACE_S + 5)
            took = time.monotonic() - began
        finally:
            broker.resume()
    assert [r.status_code for r in answers] == [202] * len(sids), [r.text for r in answers]
    assert code == 0, (tmp_path / "api.log").read_text()[-3000:]
    assert took < GRACE_S, took
    # Durable: a fresh process's relay publishes what the stopped one could not.
    relay = await started(settings, "command-api", log=tmp_path / "api2.log")
    try:

        async def all_published() -> bool:
            records = await read_topic(settings.kafka, topic)
            return all(first_versions(records, sid) == [1, 2] for sid in sids)

        await wait_until(all_published, timeout=30, interval=0.5, what="the burst in the topic")
    finally:
        relay.stop()


async def _async(count: Any, at_least: int) -> bool:
    return int(await count) >= at_least


async def test_sigterm_projector_commits_its_batch_then_a_restart_resumes_exactly(
    make_settings: Any, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    settings = make_settings(own_pg)
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    events = account_events(200, 40, seed=31)
    await produce_envelopes(settings.kafka, topic, events)
    records = await read_topic(settings.kafka, topic)
    env = processes.settings_env(
        settings, projector_session_timeout_ms=2000, projector_batch_max=100, projector_poll_ms=50
    )
    log = tmp_path / "projector.log"
    url = own_pg.read_db_url
    proc = processes.start(["serve", "projector"], env, log)
    try:
        await wait_until(
            lambda: _async(_applied(url), len(events) // 10),
            timeout=40,
            interval=0.005,
            what="the projector mid-stream",
        )
        assert processes.terminate(proc, timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            processes.kill(proc)
    # Stopped mid-stream: its rows are exactly the fold of what its offsets cover.
    offsets = await stored_offsets(url)
    applied = sum(offsets.values())
    assert 0 < applied < len(events)
    covered = [r for r in records if r.offset < offsets.get((topic, r.partition), 0)]
    assert await read_tables(url) == fold_accounts(covered)
    assert await _events_applied(url) == applied
    proc = processes.start(["serve", "projector"], env, log)
    try:
        await wait_until(lambda: caught_up(url, records, topic), timeout=60, what="caught up")
        assert await read_tables(url) == fold_accounts(records)
        assert await _events_applied(url) == len(events)
    finally:
        assert processes.terminate(proc) == 0, log.read_text()[-3000:]


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


def _broker_up(metrics: str) -> float | None:
    values = [float(x.split()[1]) for x in metrics.splitlines() if x.startswith("eventfold_broker_up ")]
    return values[0] if values else None


async def test_readyz_stays_ready_and_names_the_broker_while_it_is_paused(
    make_settings: Any, broker: Any, tmp_path: Path
) -> None:
    # Commands are durable in the outbox without Kafka (202), so a broker outage
    # must not take the command API out of service: it is reported, not required.
    settings = make_settings(kafka={**broker_kafka_settings(broker)})
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    api: ServiceProcess = await started(settings, "command-api", log=tmp_path / "api.log")
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["broker"] == "ok"
        assert ready.json()["degraded"] is False
        assert _broker_up((await http.get("/metrics")).text) == 1
        broker.pause()
        try:
            down = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        finally:
            broker.resume()
        assert down.status_code == 200, down.text
        body = down.json()
        assert body["status"] == "ready" and body["degraded"] is True, body
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("unreachable"), body
        assert _broker_up(metrics) == 0

        async def broker_back() -> bool:
            again = await http.get("/readyz")
            return again.status_code == 200 and again.json()["checks"]["broker"] == "ok"

        await wait_until(broker_back, timeout=30, interval=0.2, what="/readyz to see the broker again")
        assert _broker_up((await http.get("/metrics")).text) == 1
