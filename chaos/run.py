"""One chaos run: start the cluster, drive and inject for a while, heal, drain, judge."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.cluster import Cluster, default_broker
from chaos.driver import Driver, Workload, dump, tally
from chaos.faults import FaultInjector
from chaos.oracle import Docs, Ledger, Verdict, check
from chaos.topic import TopicSnapshot, read_topic
from command_api.tables import outbox, streams
from eventfold.db import create_engine
from examples.bank.tables import account_transactions, accounts
from projector.tables import projection_offsets

# A process restarted under load warms up for at least its first STARTUP_S
# (imports, pools, the broker's metadata; slow on a busy machine); one with less
# than MIN_STEADY_S under load after that is not judged for memory growth.
STARTUP_S = 30.0
MIN_STEADY_S = 15.0


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
            snapshot = await _drain(engine, settings, cfg.drain_timeout_s)
            tables = await _read_tables(engine)
            heads = await _heads(engine)
        finally:
            await engine.dispose()
        dump(driver.records, workdir / "commands.jsonl")
        verdict = check(driver.records, snapshot.records, tables, heads, driver.server_errors, memory)
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
        "restarts": {s.name: s.starts - 1 for s in cluster.services},
        "exit_codes_on_sigterm": exit_codes,
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


async def _drain(engine: AsyncEngine, settings: Any, timeout_s: float) -> TopicSnapshot:
    """Outbox empty, then the projection's stored offsets at the topic's end."""

    async def outbox_empty() -> bool:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(outbox))).scalar_one()) == 0

    await _until(outbox_empty, timeout_s, "the outbox to empty")
    topic = settings.kafka.topic("account")
    snapshot = await read_topic(settings.kafka, topic)

    async def caught_up() -> bool:
        c = projection_offsets.c
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(c.partition, c.next_offset).where(c.projection == "accounts", c.topic == topic)
            )
            stored = {int(p): int(o) for p, o in rows.all()}
        return all(stored.get(p, 0) >= end for p, end in snapshot.ends.items())

    await _until(caught_up, timeout_s, "the projection to reach the topic's end")
    return snapshot


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


async def _heads(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(streams.c.stream_id, streams.c.version).where(streams.c.stream_type == "account")
        )
        return {sid: int(v) for sid, v in rows.all()}
