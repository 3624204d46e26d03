"""The dual write under faults: broker outage, a crash after commit, several writers."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from eventfold.broker import broker_kafka_settings
from eventfold.kafka import create_topics
from eventfold.settings import DatabaseSettings
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import first_versions, read_topic, uid, wait_until


async def _post(http: httpx.AsyncClient, url: str, type_: str, data: dict[str, int | str]) -> httpx.Response:
    return await http.post(url, json={"type": type_, "data": data}, timeout=30)


async def test_broker_outage_gives_202_then_publishes(command_client, make_settings, broker: Any) -> None:
    # The session's local broker, which can be frozen (even in Docker mode).
    settings = make_settings(kafka={"publish_timeout_s": 2.0, **broker_kafka_settings(broker)})
    sid = uid("acct")
    url = f"/commands/account/{sid}"
    async with command_client(settings) as http:
        assert (await _post(http, url, "OpenAccount", {"owner": "G"})).status_code == 200
        broker.pause()
        try:
            began = time.monotonic()
            r = await _post(http, url, "Deposit", {"amount": 40})
            r2 = await _post(http, url, "Withdraw", {"amount": 15})
            elapsed = time.monotonic() - began
        finally:
            broker.resume()
        assert (r.status_code, r.json()["published"], r.json()["version"]) == (202, False, 2)
        assert r.headers["retry-after"] == "1"
        assert (r2.status_code, r2.json()["version"]) == (202, 3)
        assert elapsed < 2 * 2.0 + 3, f"202s took {elapsed:.1f}s"
        # Durable: the write side already counts them.
        assert (await http.get(f"/streams/account/{sid}")).json()["state"]["balance"] == 25
        # Once the broker is back, they reach the topic, in order.

        async def published() -> list[int]:
            records = await read_topic(settings.kafka, settings.kafka.topic("account"))
            versions = first_versions(records, sid)
            return versions if versions == [1, 2, 3] else []

        await wait_until(published, timeout=30, what="events after the outage")
        r = await _post(http, url, "Deposit", {"amount": 1})
        assert (r.status_code, r.json()["version"]) == (200, 4)
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2, 3, 4]


async def _crash_after_commit(settings, tmp_path: Path) -> str:
    """Send one command to a process that dies right after committing it."""
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    sid = uid("acct")
    doomed = ServiceProcess(
        settings, "command-api", module="tests.e2e.crash_after_commit", log=tmp_path / "crash.log"
    )
    doomed.start()
    await doomed.ready()
    async with httpx.AsyncClient(base_url=doomed.url) as http:
        with contextlib.suppress(httpx.HTTPError):  # it dies before answering, as intended
            await _post(http, f"/commands/account/{sid}", "OpenAccount", {"owner": "H"})
    assert await doomed.wait_exit() == -9
    # Nothing reached Kafka...
    assert first_versions(await read_topic(settings.kafka, settings.kafka.topic("account")), sid) == []
    return sid


def _own_db(fresh_pg_url: str) -> DatabaseSettings:
    # A database of its own: the doomed process must find no other test's outbox rows.
    return DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url)


async def test_crash_between_commit_and_publish_loses_nothing(
    make_settings, fresh_pg_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        _own_db(fresh_pg_url), command_api={"relay_interval_s": 0.2, "relay_grace_s": 0.5}
    )
    topic = settings.kafka.topic("account")
    sid = await _crash_after_commit(settings, tmp_path)
    # ...but the command was durable: a restarted process publishes it.
    survivor = await started(settings, "command-api", log=tmp_path / "survivor.log")
    try:

        async def published() -> list[int]:
            return first_versions(await read_topic(settings.kafka, topic), sid)

        assert await wait_until(published, timeout=30, what="the relay after restart") == [1]
        async with httpx.AsyncClient(base_url=survivor.url) as http:
            r = await _post(http, f"/commands/account/{sid}", "Deposit", {"amount": 5})
            assert (r.status_code, r.json()["version"]) == (200, 2)
    finally:
        survivor.stop()
    assert first_versions(await read_topic(settings.kafka, topic), sid) == [1, 2]


async def test_the_standalone_publisher_relays_what_a_crash_left(
    make_settings, fresh_pg_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        _own_db(fresh_pg_url), command_api={"relay_interval_s": 0.2, "relay_grace_s": 0.5}
    )
    sid = await _crash_after_commit(settings, tmp_path)
    relay = ServiceProcess(settings, "publisher", log=tmp_path / "publisher.log")
    relay.start()
    try:

        async def published() -> list[int]:
            return first_versions(await read_topic(settings.kafka, settings.kafka.topic("account")), sid)

        assert await wait_until(published, timeout=30, what="the standalone publisher") == [1]
        relay.kill(signal.SIGTERM)
        assert await relay.wait_exit() == 0
    finally:
        relay.stop()


async def test_several_command_api_processes_keep_each_stream_in_order(make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic])
    procs = [await started(settings, "command-api", log=tmp_path / f"api{i}.log") for i in range(2)]
    streams = [uid("hot") for _ in range(3)]
    rng = random.Random(7)
    acked: dict[str, list[tuple[str, int]]] = {s: [] for s in streams}
    try:
        async with httpx.AsyncClient() as http:
            for s in streams:
                r = await _post(http, f"{procs[0].url}/commands/account/{s}", "OpenAccount", {"owner": s})
                assert r.status_code == 200

            async def worker(n: int) -> None:
                for _ in range(25):
                    s = rng.choice(streams)
                    type_ = rng.choice(["Deposit", "Deposit", "Withdraw"])
                    amount = rng.randint(1, 50)
                    r = await _post(
                        http, f"{procs[n % 2].url}/commands/account/{s}", type_, {"amount": amount}
                    )
                    if r.status_code == 200:
                        acked[s].append((type_, amount))
                    else:
                        assert r.status_code == 422 and r.json()["code"] == "insufficient_funds", r.text

            await asyncio.gather(*(worker(n) for n in range(16)))
            for s in streams:
                state = (await http.get(f"{procs[1].url}/streams/account/{s}")).json()
                expected = sum(a if t == "Deposit" else -a for t, a in acked[s[:]])
                assert state["state"]["balance"] == expected >= 0
                assert state["version"] == 1 + len(acked[s])
    finally:
        for p in procs:
            p.stop()
    records = await read_topic(settings.kafka, topic)
    for s in streams:
        assert first_versions(records, s) == list(range(1, 2 + len(acked[s])))
