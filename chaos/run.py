"""One chaos run: start the cluster, drive and inject for a while, heal, drain, judge."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.cluster import TRANSFER_DEADLINE_S, Cluster, default_broker
from chaos.driver import Driver, Workload, dump, tally
from chaos.faults import FaultInjector
from chaos.oracle import Docs, Ledger, Saga, Verdict, check, welcome_key
from chaos.topic import TopicSnapshot, read_topic
from command_api.tables import outbox, streams
from eventfold.db import create_engine
from examples.bank.tables import account_transactions, accounts, transfers
from projector.tables import process_instances, projection_offsets

# A process restarted under load warms up for at least its first STARTUP_S
# (imports, pools, the broker's metadata; slow on a busy machine); one with less
# than MIN_STEADY_S under load after that is not judged for memory growth.
STARTUP_S = 30.0
MIN_STEADY_S = 15.0
# A transfer must end within its deadline plus this, not counting the time the
# broker or the database was down (the faults' outages: on a loaded machine an
# Apache Kafka node takes 20-70 s to come back, and they come one after
# another). What is left is the saga's own work: each step goes through the
# topics, and the process manager itself is killed and paused.
TRANSFER_BOUND_S = 120.0


@dataclass(frozen=True)
class RunConfig:
    duration_s: float = 600.0
    broker: str = field(default_factory=default_broker)  # apache | tansu
    seed: int = 0
    pg_restart: bool = True
    concurrency: int = 12
    drain_timeout_s: float = 180.0
    workdir: Path | None = None  # process logs; a temporary directory if None
    keep: bool = False  # keep the database (and logs) after the run


@dataclass
class RunResult:
    config: RunConfig
    summary: dict[str, Any]
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return self.verdict.total == 0


async def run(cfg: RunConfig, say: Any = print) -> RunResult:
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="eventfold-chaos-"))
    say(
        f"chaos: seed={cfg.seed} duration={cfg.duration_s:.0f}s broker={cfg.broker} "
        f"pg_restart={cfg.pg_restart} logs={workdir}"
    )
    rng = random.Random(cfg.seed)
    cluster = Cluster(workdir, broker=cfg.broker)
    began = time.monotonic()
    exit_codes: dict[str, int | None] = {}
    try:
        settings = await cluster.start()
        say(f"chaos: cluster up (broker {cluster.broker.bootstrap}, database {cluster.db_url})")
        run_id = f"c{uuid.uuid4().hex[:6]}"
        driver = Driver(
            cluster.command_urls, Workload.new(run_id, rng.randrange(2**32)), concurrency=cfg.concurrency
        )
        injector = FaultInjector(
            cluster,
            random.Random(rng.randrange(2**32)),
            window_s=max(1.0, cfg.duration_s - min(8.0, 0.15 * cfg.duration_s)),
            pg_restart=cfg.pg_restart,
        )
        driving = time.monotonic()
        load_from = cluster.rss.now()
        drive = asyncio.create_task(driver.run())
        faults = asyncio.create_task(injector.run())
        await _wait_or_fail(drive, cfg.duration_s)
        # Broker faults heal before the next starts, so the first round of every
        # kind can run past the window: the load stays on until the faults end.
        fault_log = await faults
        driver.stop()
        await drive
        driven_s = time.monotonic() - driving
        # The load is the same from start to end, faults aside: each incarnation
        # that lived long enough under it must keep its RSS flat after warm-up.
        load_to = cluster.rss.now()
        memory = cluster.rss.judge_lifetimes(
            load_from, load_to, "under load", startup_s=STARTUP_S, min_steady_s=MIN_STEADY_S
        )
        cluster.broker.resume()  # in case a pause was cut short
        revived = await cluster.revive()
        say(f"chaos: {len(driver.records)} commands sent; faults over; revived {revived or 'none'}; draining")
        engine = create_engine(settings.db.write_db_url, pool_size=2)
        try:
            drained = time.monotonic()
            await _transfers_ended(
                engine, driver, TRANSFER_DEADLINE_S + TRANSFER_BOUND_S + cfg.drain_timeout_s
            )
            snapshot = await _drain(engine, settings, cfg.drain_timeout_s)
            mails = await _mails_in(cluster, snapshot, cfg.drain_timeout_s)
            drain_s = time.monotonic() - drained
            tables = await _read_tables(engine)
            heads = await _heads(engine)
            saga = await _read_saga(engine)
        finally:
            await engine.dispose()
        dump(driver.records, workdir / "commands.jsonl")
        verdict = check(
            driver.records,
            snapshot.records,
            tables,
            heads,
            driver.server_errors,
            memory,
            saga=Saga(
                transfers=[t.stream_id for t in driver.transfers],
                read_status=saga[0],
                stuck=saga[1],
                mails=mails,
                deadline_s=TRANSFER_DEADLINE_S,
                bound_s=TRANSFER_BOUND_S,
                outages=fault_log.outages,
            ),
        )
        exit_codes = await cluster.stop(keep_db=cfg.keep)
    except BaseException:
        with contextlib.suppress(Exception):
            await cluster.stop(keep_db=True)
        say(f"chaos: harness failed; logs in {workdir}, database kept: {cluster.db_url}")
        raise
    summary = {
        "seed": cfg.seed,
        "duration_s": round(driven_s, 1),
        "total_s": round(time.monotonic() - began, 1),
        "pg_restart": cfg.pg_restart,
        "broker": cluster.broker.kind,
        "concurrency": cfg.concurrency,
        "commands": tally(driver.records),
        "faults": dict(sorted(fault_log.injected.items())),
        "fault_errors": fault_log.errors,
        "unexpected_exits": fault_log.unexpected_exits,
        "fault_timeline": fault_log.events,
        "outage_seconds": round(sum(b - a for a, b in fault_log.outages), 1),
        "restarts": {s.name: s.starts - 1 for s in cluster.services},
        "exit_codes_on_sigterm": exit_codes,
        "drain_s": round(drain_s, 1),
        "transfers": verdict.transfers,
        "transfer_seconds": verdict.transfer_seconds,
        "emails": verdict.emails,
        "events_checked": verdict.events_checked,
        "streams_checked": verdict.streams_checked,
        "violations": verdict.total,
        "violations_by_check": verdict.counts,
        "violation_examples": {k: v for k, v in verdict.violations.items() if v},
        "rss": {**cluster.rss.report(memory), "load_s": [round(load_from, 1), round(load_to, 1)]},
        "logs": str(workdir),
    }
    return RunResult(cfg, summary, verdict)


async def _wait_or_fail(task: asyncio.Task[None], seconds: float) -> None:
    """Let the driver run for `seconds`; its own crash ends the run early."""
    done, _ = await asyncio.wait([task], timeout=seconds)
    if done:
        task.result()
        raise RuntimeError("the driver stopped before the end of the run")


async def _until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = await check()
            if last:
                return last
        await asyncio.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


async def _outbox_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(outbox))).scalar_one())


async def _outbox_empty(engine: AsyncEngine) -> bool:
    return await _outbox_rows(engine) == 0


async def _transfers_ended(engine: AsyncEngine, driver: Driver, timeout_s: float) -> None:
    """Every transfer the driver had acknowledged has ended (or is stuck) in the saga's table."""
    wanted = {t.stream_id for t in driver.transfers}
    c = process_instances.c

    async def ended() -> bool:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(c.instance).where(c.process == "transfers", c.status.in_(("done", "stuck")))
            )
            return wanted <= {r[0] for r in rows}

    try:
        await _until(ended, timeout_s, f"the {len(wanted)} transfers to end")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {await _saga_state(engine, wanted)}") from None


def _instance(transfer: str, row: Any) -> str:
    if row is None:
        return f"{transfer}: no instance"
    due = "no deadline" if row.deadline is None else f"deadline in {row.deadline - time.time():.0f}s"
    return f"{transfer}: {row.status}, {due}, pending {row.pending[:200]}"


async def _saga_state(engine: AsyncEngine, wanted: set[str]) -> str:
    """Where the transfers that did not end are: their instances, the outbox, the saga's offsets."""
    c, o = process_instances.c, projection_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.instance, c.status, c.pending, c.deadline).where(c.process == "transfers")
        )
        instances = {r.instance: r for r in rows}
        offsets = (
            await conn.execute(
                select(o.topic, o.partition, o.next_offset).where(o.projection == "process:transfers")
            )
        ).all()
    waiting = await _outbox_rows(engine)
    open_ = sorted(t for t in wanted if t not in instances or instances[t].status not in ("done", "stuck"))
    described = [_instance(t, instances.get(t)) for t in open_[:10]]
    return (
        f"{len(open_)} not ended ({'; '.join(described)}); outbox rows {waiting}; "
        f"saga offsets {sorted((t, p, n) for t, p, n in offsets)}"
    )


async def _drain(engine: AsyncEngine, settings: Any, timeout_s: float) -> TopicSnapshot:
    """Outbox empty, then every projection's and the saga's stored offsets at the topics' ends."""
    await _until(lambda: _outbox_empty(engine), timeout_s, "the outbox to empty")
    snapshot = TopicSnapshot([], {})
    ends: dict[tuple[str, int], int] = {}
    for stream_type in ("account", "transfer"):
        topic = settings.kafka.topic(stream_type)
        part = await read_topic(settings.kafka, topic)
        snapshot.records.extend(part.records)
        ends.update({(topic, p): end for p, end in part.ends.items()})

    async def caught_up(consumer: str, topics: set[str]) -> bool:
        c = projection_offsets.c
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(c.topic, c.partition, c.next_offset).where(c.projection == consumer)
            )
            stored = {(t, int(p)): int(o) for t, p, o in rows.all()}
        return all(stored.get(k, 0) >= end for k, end in ends.items() if k[0] in topics)

    every = {t for t, _ in ends}
    for consumer, topics in (
        ("accounts", {settings.kafka.topic("account")}),
        ("transfers", {settings.kafka.topic("transfer")}),
        ("process:transfers", every),
    ):
        done = functools.partial(caught_up, consumer, topics)
        await _until(done, timeout_s, f"{consumer} to reach the topics' end")
    return snapshot


async def _mails_in(cluster: Cluster, snapshot: TopicSnapshot, timeout_s: float) -> Counter[str]:
    """Wait (up to the timeout) for a welcome mail for every account opened; the inbox's counts."""
    owed = {welcome_key(r.envelope.event_id) for r in snapshot.records if r.envelope.type == "AccountOpened"}

    async def all_in() -> bool:
        return owed <= set(cluster.mail.inbox.counts())

    with contextlib.suppress(TimeoutError):
        await _until(all_in, timeout_s, "a welcome mail for every account")
    return cluster.mail.inbox.counts()


async def _read_tables(engine: AsyncEngine) -> tuple[Docs, Ledger]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(accounts))).mappings().all()
        tx = (await conn.execute(select(account_transactions))).all()
    docs = {
        r["id"]: {
            "owner": r["owner"],
            "balance": r["balance"],
            "status": r["status"],
            "version": r["version"],
        }
        for r in rows
    }
    ledger = sorted((t.account_id, t.version, t.type, t.amount, t.balance_after) for t in tx)
    return docs, ledger


async def _heads(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(streams.c.stream_type, streams.c.stream_id, streams.c.version))
        return {(st, sid): int(v) for st, sid, v in rows.all()}


async def _read_saga(engine: AsyncEngine) -> tuple[dict[str, str], dict[str, str]]:
    """The transfers read model's status per transfer, and the saga's stuck instances with their reason."""
    c = process_instances.c
    async with engine.connect() as conn:
        read = {r.id: r.status for r in await conn.execute(select(transfers.c.id, transfers.c.status))}
        stuck = {
            r.instance: r.reason or ""
            for r in await conn.execute(
                select(c.instance, c.reason).where(c.process == "transfers", c.status == "stuck")
            )
        }
    return read, stuck
