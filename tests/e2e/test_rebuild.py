"""Blue/green rebuild under live traffic: writes keep flowing, reads never fail or go back.

The live projector and the query API run in this event loop; a writer task
keeps producing events and reader tasks keep querying accounts while
`rebuild_projection` builds the next generation and swaps it in, twice.
`EVENTFOLD_REBUILD_EVENTS` sets the size of the initial topic (default 20,000).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select

from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic, new_producer, partition_for
from eventfold.settings import DatabaseSettings
from examples.bank.projection import ACCOUNTS
from projector.rebuild import RebuildProgress, rebuild_projection, stored_generation
from projector.tables import projection_status
from schemas.envelope import EventEnvelope
from schemas.mapper import encode_value, envelope_headers
from tests.conftest import migrated_sqlite
from tests.helpers import Record, read_topic, wait_until
from tests.support.projection import (
    account_events,
    caught_up,
    fast_projector,
    fold_accounts,
    produce_envelopes,
    query_client,
    read_tables,
    running_projector,
)

EVENTS = int(os.environ.get("EVENTFOLD_REBUILD_EVENTS", "20000"))
PER_ACCOUNT = 20


async def _write(settings: Any, topic: str, heads: dict[str, int], stop: asyncio.Event) -> int:
    """Deposits to random accounts, a few per tick, until `stop`: the live write load."""
    producer = new_producer(settings.kafka, linger_ms=5)
    await producer.start()
    sent = 0
    rng = random.Random(7)
    try:
        parts = len(await producer.partitions_for(topic))
        ids = sorted(heads)
        while not stop.is_set():
            futures = []
            for sid in rng.sample(ids, 5):
                heads[sid] += 1
                env = EventEnvelope(
                    event_id=uuid.uuid4(),
                    stream_type="account",
                    stream_id=sid,
                    version=heads[sid],
                    type="Deposited",
                    occurred_at=datetime.now(UTC),
                    data={"amount": rng.randint(1, 100)},
                )
                key = sid.encode()
                futures.append(
                    await producer.send(
                        topic,
                        key=key,
                        value=encode_value(env),
                        headers=envelope_headers(env),
                        partition=partition_for(key, parts),
                    )
                )
            await asyncio.gather(*futures)
            sent += len(futures)
            await asyncio.sleep(0.02)  # pacing, not synchronisation
    finally:
        await producer.stop()
    return sent


async def _read(q: Any, ids: list[str], seed: int, stop: asyncio.Event) -> list[tuple[str, int, Any]]:
    """Sequential account reads: (id, status code, body)."""
    rng = random.Random(seed)
    out: list[tuple[str, int, Any]] = []
    while not stop.is_set():
        sid = rng.choice(ids)
        try:
            r = await q.get(f"/accounts/{sid}")
            out.append((sid, r.status_code, r.json() if r.status_code == 200 else r.text))
            if rng.random() < 0.1:
                page = await q.get("/accounts", params={"limit": 20})
                out.append(("", page.status_code, None))
        except Exception as exc:  # the ASGI transport re-raises a 500's exception
            out.append((sid, 0, f"{time.time():.3f} {exc!r}"))
        await asyncio.sleep(0.005)  # pacing
    return out


def _balances(records: list[Record]) -> dict[str, dict[int, int]]:
    """Each account's balance at each version, folded from the topic."""
    out: dict[str, dict[int, int]] = {}
    for r in records:
        env = r.envelope()
        seen = out.setdefault(env.stream_id, {})
        if env.version != len(seen) + 1:
            continue
        before = seen.get(env.version - 1, 0)
        sign = {"Deposited": 1, "Withdrawn": -1}.get(env.type, 0)
        seen[env.version] = before + sign * int(env.data.get("amount", 0))
    return out


async def test_rebuild_under_live_traffic(make_settings, own_db: DatabaseSettings) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    url = own_db.read_db_url
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    initial = account_events(EVENTS // PER_ACCOUNT, PER_ACCOUNT, seed=31)
    await produce_envelopes(settings.kafka, topic, initial)
    heads = {e.stream_id: PER_ACCOUNT for e in initial}
    ids = sorted(heads)
    engine = create_engine(url, pool_size=4)
    try:
        async with running_projector(settings), query_client(settings) as q:
            records = await read_topic(settings.kafka, topic, timeout=120)
            await wait_until(lambda: caught_up(url, records, topic), timeout=180, what="live projector")
            stop = asyncio.Event()
            writer = asyncio.create_task(_write(settings, topic, heads, stop))
            readers = [asyncio.create_task(_read(q, ids, seed, stop)) for seed in range(4)]
            reports: list[RebuildProgress] = []
            results = []
            timings = []
            try:
                for _ in range(2):  # a second rebuild in a row derives fresh names again
                    began = time.monotonic()
                    results.append(await rebuild_projection(settings, ACCOUNTS, engine, reports.append))
                    timings.append(time.monotonic() - began)
            finally:
                stop.set()
                sent = await writer
                per_reader = [await task for task in readers]
                reads = [r for one in per_reader for r in one]
            final = await read_topic(settings.kafka, topic, timeout=120)
            await wait_until(lambda: caught_up(url, final, topic), timeout=120, what="projector after swap")
            projections = (await q.get("/projections")).json()["projections"]
        assert await read_tables(url) == fold_accounts(final)
    finally:
        await engine.dispose()

    assert [r.generation for r in results] == [2, 3]
    reader = create_engine(url, writer=False)
    try:
        assert await stored_generation(reader, "accounts") == 3
    finally:
        await reader.dispose()
    assert projections[0]["generation"] == 3 and projections[0]["state"] == "live"
    # The handover reports too when it has records left to apply; catch-up always does.
    assert {(r.generation, r.phase) for r in reports} >= {(2, "catch-up 1"), (3, "catch-up 1")}
    # No failed query, and every account read is a state the topic's prefix explains.
    failed = [r for r in reads if r[1] != 200]
    assert not failed, failed[:5]
    balances = _balances(final)
    for one in per_reader:
        last: dict[str, int] = {}
        for sid, _, body in one:
            if not sid:
                continue
            assert balances[sid][body["version"]] == body["balance"], (sid, body)
            assert body["version"] >= last.get(sid, 0), (sid, body, last.get(sid))
            last[sid] = body["version"]
    seconds = sum(timings)
    # Reads were served all through the rebuilds (each reader kept going), whatever the machine's speed.
    assert all(len(one) >= 10 for one in per_reader), [len(one) for one in per_reader]
    # The swapped-away tables are gone; only the live names and no generation is left.
    leftovers = await _tables(url)
    assert not [t for t in leftovers if "__g" in t or "__old" in t], leftovers
    print(
        f"\nrebuild of {len(records)}+ events on {engine.dialect.name}: "
        + ", ".join(
            f"g{r.generation} {r.records} records in {r.seconds:.1f}s "
            f"(paused {r.switch_seconds * 1000:.0f} ms, {r.rounds} rounds)"
            for r in results
        )
        + f"; {len(reads)} queries served during {seconds:.1f}s, {sent} events written meanwhile"
    )


async def _tables(url: str) -> list[str]:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()


async def _status(q: Any) -> dict[str, Any]:
    report: dict[str, Any] = (await q.get("/projections")).json()["projections"][0]
    return report


async def _at_generation(q: Any, n: int) -> bool:
    s = await _status(q)
    return bool(s["generation"] == n and s["state"] == "live" and s["rebuild_progress"] is None)


async def test_rebuild_over_http_the_cli_and_on_a_new_version(make_settings, tmp_path: Path) -> None:
    import dataclasses

    from tests.integration.test_auth import auth_settings, bearer
    from tests.support import processes
    from tests.support.projection import checksum

    db = await migrated_sqlite(tmp_path)
    settings = make_settings(db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    url = db.read_db_url
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    await produce_envelopes(settings.kafka, topic, account_events(100, 10, seed=32))
    records = await read_topic(settings.kafka, topic)
    async with running_projector(settings):
        await wait_until(lambda: caught_up(url, records, topic), timeout=60, what="live projector")
        async with query_client(settings) as q:
            assert (await q.post("/projections/nope/rebuild")).status_code == 404
            r = await q.post("/projections/accounts/rebuild")
            assert (r.status_code, r.json()) == (202, {"projection": "accounts", "generation": 2})
            again = await q.post("/projections/accounts/rebuild")
            assert (again.status_code, again.json()["code"]) == (409, "rebuild_running")
            await wait_until(lambda: _at_generation(q, 2), timeout=60, what="HTTP rebuild")
        async with query_client(settings.model_copy(update={"auth": auth_settings()})) as q:
            assert (await q.post("/projections/nope/rebuild", headers=bearer("reader"))).status_code == 403
            assert (await q.post("/projections/nope/rebuild", headers=bearer("admin"))).status_code == 404
        before = await checksum(url)
        env = processes.settings_env(settings)
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "eventfold.cli", "rebuild", "accounts"],
            cwd=processes.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rebuilt accounts as generation 3" in done.stderr
        assert await checksum(url) == before
    # A deploy that declares a new version rebuilds in the background at start.
    bumped = dataclasses.replace(ACCOUNTS, version=ACCOUNTS.version + 1)
    async with running_projector(settings, [bumped]), query_client(settings) as q:
        await wait_until(lambda: _at_generation(q, 4), timeout=60, what="rebuild for the new version")
    assert await read_tables(url) == fold_accounts(records)
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            accounts = select(projection_status).where(projection_status.c.projection == "accounts")
            row = (await conn.execute(accounts)).mappings().all()
    finally:
        await engine.dispose()
    assert [(r["projection"], r["version"], r["generation"]) for r in row] == [
        ("accounts", ACCOUNTS.version + 1, 4)
    ]
