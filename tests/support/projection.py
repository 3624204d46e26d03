"""Test support for the read side: an in-process projector, a query client, folds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.projection import Projection
from eventfold.settings import Settings
from examples.bank.tables import account_transactions, accounts
from projector.runtime import run_projectors
from projector.tables import projection_offsets
from tests.helpers import Record, app_client


@asynccontextmanager
async def running_projector(
    settings: Settings, projections: Sequence[Projection] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """The projector runtime in this event loop; stopped (gracefully) on exit."""
    from tests.support.bank import default_projections as default

    stop = asyncio.Event()
    task = asyncio.create_task(run_projectors(settings, list(projections or default()), stop))
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


@asynccontextmanager
async def query_client(
    settings: Settings, projections: Sequence[Projection] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    from query_api.bootstrap import create_app
    from tests.support.bank import bank

    chosen = list(projections) if projections is not None else list(bank.projections)
    routers = bank.routers if projections is None or any(p.name == "accounts" for p in chosen) else ()
    async with app_client(create_app(settings, chosen, routers)) as client:
        yield client


def fold_accounts(records: list[Record]) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
    """The expected read model: a fold of the topic, first occurrence of each version."""
    docs: dict[str, dict[str, Any]] = {}
    ledger: list[tuple[Any, ...]] = []
    for r in records:
        env = r.envelope()
        doc = docs.get(env.stream_id)
        if env.version != (doc["version"] if doc else 0) + 1:
            continue
        if env.type == "AccountOpened":
            doc = {"owner": env.data["owner"], "balance": 0, "status": "open"}
        elif env.type in ("Deposited", "Withdrawn"):
            assert doc is not None
            sign = 1 if env.type == "Deposited" else -1
            doc = {**doc, "balance": doc["balance"] + sign * env.data["amount"]}
            ledger.append(
                (
                    env.stream_id,
                    env.version,
                    "deposit" if sign > 0 else "withdrawal",
                    env.data["amount"],
                    doc["balance"],
                    env.data.get("reference", ""),
                )
            )
        elif env.type == "AccountClosed":
            assert doc is not None
            doc = {**doc, "status": "closed"}
        doc["version"] = env.version
        docs[env.stream_id] = doc
    return docs, sorted(ledger)


async def read_tables(url: str) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(accounts))).mappings().all()
            tx = (await conn.execute(select(account_transactions))).all()
    finally:
        await engine.dispose()
    docs = {
        r["id"]: {
            "owner": r["owner"],
            "balance": r["balance"],
            "status": r["status"],
            "version": r["version"],
        }
        for r in rows
    }
    ledger = sorted((t.account_id, t.version, t.type, t.amount, t.balance_after, t.reference) for t in tx)
    return docs, ledger


async def stored_offsets(url: str, projection: str = "accounts") -> dict[tuple[str, int], int]:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            c = projection_offsets.c
            rows = await conn.execute(
                select(c.topic, c.partition, c.next_offset).where(c.projection == projection)
            )
            return {(t, p): o for t, p, o in rows.all()}
    finally:
        await engine.dispose()


async def caught_up(url: str, records: list[Record], topic: str) -> bool:
    """True once the stored offsets reach the end of every partition in `records`."""
    ends: dict[tuple[str, int], int] = {}
    for r in records:
        ends[(topic, r.partition)] = max(ends.get((topic, r.partition), 0), r.offset + 1)
    stored = await stored_offsets(url)
    return all(stored.get(k, 0) >= v for k, v in ends.items())


async def checksum(url: str) -> str:
    """A digest of every row of the account read tables, in key order."""
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            a = (await conn.execute(select(accounts).order_by(accounts.c.id))).all()
            t = (
                await conn.execute(
                    select(account_transactions).order_by(
                        account_transactions.c.account_id, account_transactions.c.version
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return hashlib.sha256(repr([tuple(r) for r in a] + [tuple(r) for r in t]).encode()).hexdigest()


def fast_projector(**overrides: Any) -> Any:
    """Projector settings for tests: the embedded broker answers a JoinGroup
    after half the rebalance timeout, so a short session keeps tests quick."""
    from eventfold.settings import ProjectorSettings

    options: dict[str, Any] = {"projector_session_timeout_ms": 2000, "projector_poll_ms": 50}
    options.update(overrides)
    return ProjectorSettings(**options)


def account_events(n_accounts: int, per_account: int, seed: int = 1) -> list[Any]:
    """Envelopes of a valid account workload: open, then deposits and withdrawals."""
    import random
    import uuid
    from datetime import UTC, datetime, timedelta

    from schemas.envelope import EventEnvelope

    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for a in range(n_accounts):
        sid = f"acct-{seed}-{a:05d}"
        balance = 0
        for v in range(1, per_account + 1):
            if v == 1:
                type_, data = "AccountOpened", {"owner": f"owner-{a % 7}"}
            elif balance > 0 and rng.random() < 0.3:
                type_, data = "Withdrawn", {"amount": rng.randint(1, balance)}
                balance -= data["amount"]
            else:
                type_, data = "Deposited", {"amount": rng.randint(1, 1000)}
                balance += data["amount"]
            out.append(
                EventEnvelope(
                    event_id=uuid.uuid4(),
                    stream_type="account",
                    stream_id=sid,
                    version=v,
                    type=type_,
                    occurred_at=base + timedelta(seconds=a * per_account + v),
                    data=data,
                )
            )
    rng.shuffle(out)
    # Keep each stream's versions in order while interleaving streams.
    by_stream: dict[str, list[Any]] = {}
    for e in out:
        by_stream.setdefault(e.stream_id, []).append(e)
    for events in by_stream.values():
        events.sort(key=lambda e: e.version)
    cursor = {k: 0 for k in by_stream}
    ordered = []
    for e in out:
        i = cursor[e.stream_id]
        ordered.append(by_stream[e.stream_id][i])
        cursor[e.stream_id] = i + 1
    return ordered


async def produce(kafka: Any, topic: str, items: list[tuple[bytes | None, bytes | None, list[Any]]]) -> None:
    """Send (key, value, headers) records, keyed ones to their stream's partition."""
    from eventfold.kafka import new_producer, partition_for

    producer = new_producer(kafka, linger_ms=5)
    await producer.start()
    try:
        parts = len(await producer.partitions_for(topic))
        futures = [
            await producer.send(
                topic,
                key=k,
                value=v,
                headers=h,
                partition=partition_for(k, parts) if k is not None else 0,
            )
            for k, v, h in items
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_envelopes(kafka: Any, topic: str, envelopes: list[Any]) -> None:
    from schemas.mapper import encode_value, envelope_headers

    await produce(
        kafka,
        topic,
        [(e.stream_id.encode(), encode_value(e), envelope_headers(e)) for e in envelopes],
    )
