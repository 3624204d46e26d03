"""Projector catch-up and replay on a topic filled with valid account events.

The topic is filled directly (envelope + mapper, batched sends), not through
the command API, so a million events take seconds. The projector then runs as
`eventfold serve projector` and is timed until its stored offsets
(`projection_offsets`, written with the rows) reach the offsets the fill
left; `eventfold replay accounts` is timed as a whole process.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.env import (
    BenchEnv,
    Child,
    cpu_by_program,
    cpu_delta_us,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mb,
    process_tree,
)
from bench.raw import send_partitioned
from eventfold.kafka import create_topics, new_producer, partition_for
from eventfold.settings import KafkaSettings
from examples.bank.contracts import ACCOUNT
from schemas.mapper import encode_envelope

EVENTS_PER_STREAM = 10
Progress = Callable[[int], None]


def account_events(
    n: int, partitions: int, block: int = 10_000
) -> Iterator[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    """`n` events over n/10 account streams: opened, a deposit, then deposits and withdrawals.

    Streams are interleaved by blocks (version 1 of a block's streams, then
    version 2, ...), so a projector batch touches many streams, as live
    traffic would. Each stream's versions are 1..n in order on its partition.
    """
    streams = max(1, n // EVENTS_PER_STREAM)
    occurred = datetime.now(UTC)
    correlation = str(uuid.uuid4())
    emitted = 0
    for first in range(0, streams, block):
        ids = [f"fill-{i:07d}" for i in range(first, min(first + block, streams))]
        keys = [i.encode() for i in ids]
        parts = [partition_for(k, partitions) for k in keys]
        for version in range(1, EVENTS_PER_STREAM + 1):
            for sid, key, part in zip(ids, keys, parts, strict=True):
                if emitted >= n:
                    return
                data: dict[str, object]
                if version == 1:
                    etype, data = "AccountOpened", {"owner": f"owner of {sid}"}
                elif version == 2 or version % 2 == 1:
                    etype, data = "Deposited", {"amount": 1000 if version == 2 else 100, "reference": ""}
                else:
                    etype, data = "Withdrawn", {"amount": 50, "reference": ""}
                # What the command API writes today: each event at its current schema version.
                value, headers = encode_envelope(
                    event_id=str(uuid.uuid4()),
                    stream_type="account",
                    stream_id=sid,
                    version=version,
                    type=etype,
                    schema_version=ACCOUNT.events[etype].schema_version,
                    occurred_at=occurred,
                    correlation_id=correlation,
                    causation_id=None,
                    data=data,
                )
                yield part, key, value, headers
                emitted += 1
    # fewer streams than blocks need: top up is not needed, n is a multiple of 10 in practice


async def fill(
    kafka: KafkaSettings, n: int, progress: Progress | None = None
) -> tuple[dict[int, int], float]:
    """Write `n` events to the account topic; returns the end offsets and the fill rate."""
    topic = kafka.topic("account")
    await create_topics(kafka, [topic])
    producer = new_producer(kafka, linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        ends = await send_partitioned(producer, topic, account_events(n, kafka.partitions), progress=progress)
        return ends, n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


@dataclass
class Progressed:
    done: bool
    applied: int  # records behind the stored offsets, all partitions
    projections: list[str]


async def stored_progress(env: BenchEnv, read_url: str, topic: str, ends: dict[int, int]) -> Progressed:
    """How far the projections have stored offsets on `topic`, against `ends`."""
    conn = await env.connect(read_url)
    try:
        rows = await conn.fetch(
            "SELECT projection, partition, next_offset FROM projection_offsets WHERE topic = $1", topic
        )
    finally:
        await conn.close()
    by_proj: dict[str, dict[int, int]] = {}
    for r in rows:
        by_proj.setdefault(r["projection"], {})[int(r["partition"])] = int(r["next_offset"])
    if not by_proj:
        return Progressed(False, 0, [])
    # The slowest projection decides; partitions with no row yet count as 0.
    applied = min(sum(min(offs.get(p, 0), end) for p, end in ends.items()) for offs in by_proj.values())
    done = all(offs.get(p, 0) >= end for offs in by_proj.values() for p, end in ends.items() if end > 0)
    return Progressed(done, applied, sorted(by_proj))


@dataclass
class CatchUp:
    events_per_s: float  # from the first stored progress to the end: the steady rate
    wall_s: float  # from process start, including imports, connects and the group join
    peak_rss_mb: float | None
    projections: list[str]
    partial: str | None = None  # set when a quick run stopped at its time limit
    # CPU over the same window as the rate, per event: the projector's processes,
    # and the whole machine's (PostgreSQL and the broker included).
    cpu_us_per_event: float | None = None
    machine_cpu_us_per_event: float | None = None
    # The machine's CPU per event by program (`postgres`, `java`, `python`...).
    by_program: dict[str, float] | None = None


async def wait_caught_up(
    env: BenchEnv,
    child: Child | None,
    read_url: str,
    topic: str,
    ends: dict[int, int],
    *,
    timeout_s: float,
    progress: Progress | None = None,
    poll_s: float = 0.05,
    partial_ok: bool = False,
) -> CatchUp:
    total = sum(ends.values())
    t_start = child.started if child is not None else time.perf_counter()
    first: tuple[float, int] | None = None
    cpu_at_first: tuple[float | None, float, dict[int, tuple[str, float]]] = (None, 0.0, {})
    peak = None
    deadline = time.perf_counter() + timeout_s
    while True:
        now = time.perf_counter()
        if child is not None:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
            peak = child.peak_rss_mb() or peak
        p = await stored_progress(env, read_url, topic, ends)
        if progress is not None:
            progress(p.applied)
        if first is None and p.applied > 0:
            first = (now, p.applied)
            cpu_at_first = (_tree_cpu(child), machine_busy_seconds(), cpu_by_program())
        if p.done:
            end = time.perf_counter()
            if first is None or end - first[0] < 0.2:
                return CatchUp(total / (end - t_start), end - t_start, peak, p.projections)
            events = total - first[1]
            own, machine = _tree_cpu(child), machine_busy_seconds()
            return CatchUp(
                events / (end - first[0]),
                end - t_start,
                peak,
                p.projections,
                cpu_us_per_event=(own - cpu_at_first[0]) * 1e6 / events
                if own is not None and cpu_at_first[0] is not None
                else None,
                machine_cpu_us_per_event=(machine - cpu_at_first[1]) * 1e6 / events,
                by_program=cpu_delta_us(cpu_at_first[2], cpu_by_program(), events),
            )
        if now > deadline:
            got = f"{p.applied} of {total} events"
            if partial_ok and first is not None and p.applied > first[1]:
                # A slow machine: report the rate so far rather than nothing.
                rate = (p.applied - first[1]) / (now - first[0])
                note = f"stopped after {timeout_s:.0f}s at {got}"
                return CatchUp(rate, now - t_start, peak, p.projections, note)
            raise TimeoutError(
                f"projection not caught up in {timeout_s:.0f}s ({got}, projections {p.projections})"
            )
        await asyncio.sleep(poll_s)


def _tree_cpu(child: Child | None) -> float | None:
    """CPU seconds of `child` and its members so far."""
    if child is None:
        return None
    times = [cpu_seconds(pid) for pid in process_tree(child.pid)]
    return sum(t for t in times if t is not None)


async def catch_up_run(
    env: BenchEnv,
    prefix: str,
    read_url: str,
    write_url: str,
    ends: dict[int, int],
    *,
    timeout_s: float,
    progress: Progress | None = None,
    partial_ok: bool = False,
    profile: dict[str, object] | None = None,
    processes: int | None = None,
) -> CatchUp:
    """One run: empty read store, start `eventfold serve projector`, wait, stop.

    `processes` sets EVENTFOLD_PROJECTOR_PROCESSES, the members it runs in
    one consumer group; None leaves its default. With `profile` (a dict to
    fill), py-spy records the projector and its members for the run.
    """
    from bench.profile import Recording

    await env.truncate_all(read_url)
    service_env = env.service_env(prefix, write_url, read_url)
    if processes is not None:
        service_env["EVENTFOLD_PROJECTOR_PROCESSES"] = str(processes)
    child = env.eventfold("projector", ["serve", "projector"], service_env)
    rec = Recording(child.pid, "projector", int(timeout_s) + 30) if profile is not None else None
    try:
        return await wait_caught_up(
            env,
            child,
            read_url,
            env.kafka(prefix).topic("account"),
            ends,
            timeout_s=timeout_s,
            progress=progress,
            partial_ok=partial_ok,
        )
    finally:
        await env.stop_child(child)
        if rec is not None and profile is not None:
            profile.update(await rec.finish())


@dataclass
class Replay:
    events: int
    seconds: float
    peak_rss_mb: float | None
    exit_code: int | None
    partial: str | None = None
    # (seconds since start, resident MB), every half second: growth or a plateau?
    rss_timeline: list[tuple[float, float]] | None = None
    # CPU per event, the replay's (its workers included) and the whole machine's.
    cpu_us_per_event: float | None = None
    machine_cpu_us_per_event: float | None = None
    # The machine's CPU per event by program (`postgres`, `java`, `python`...).
    by_program: dict[str, float] | None = None


async def replay_run(
    env: BenchEnv,
    prefix: str,
    read_url: str,
    write_url: str,
    ends: dict[int, int],
    *,
    projection: str,
    timeout_s: float,
    tick: Callable[[float], None] | None = None,
    partial_ok: bool = False,
    profile: dict[str, object] | None = None,
) -> Replay:
    """`eventfold replay <projection>` as a process: its wall time and peak RSS.

    With `partial_ok` (quick runs), a replay still running at `timeout_s` is
    stopped and reported by the offsets it had stored (the replay stores them
    with its rows, as the live projector does).
    """
    from bench.profile import Recording

    child = env.eventfold("replay", ["replay", projection], env.service_env(prefix, write_url, read_url))
    rec = Recording(child.pid, "replay", int(timeout_s) + 30) if profile is not None else None
    peak: float | None = None
    timeline: list[tuple[float, float]] = []
    total = sum(ends.values())
    topic = env.kafka(prefix).topic("account")
    machine_at_start = machine_busy_seconds()
    programs = programs_at_start = cpu_by_program()
    try:
        deadline = time.perf_counter() + timeout_s
        while True:
            # Reap without blocking. Its rusage is no use for the peak: Linux counts
            # in ru_maxrss the parent's resident set copied at fork, before exec.
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG)
            if pid:
                seconds = time.perf_counter() - child.started
                # The rusage of a reaped process includes the workers it joined.
                cpu_s = usage.ru_utime + usage.ru_stime
                child.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            # The largest peak of one process: the replay, or one of its workers.
            tree = process_tree(child.pid)
            peak = max([p for p in map(peak_rss_mb, tree) if p is not None] + [peak or 0.0]) or None
            elapsed = time.perf_counter() - child.started
            if elapsed - (timeline[-1][0] if timeline else -1.0) >= 0.5:
                programs = cpu_by_program()  # the last sample before the replay is reaped counts
                sizes = [r for r in (peak_rss_mb(p, "VmRSS") for p in tree) if r is not None]
                if sizes:  # all processes together
                    timeline.append((round(elapsed, 1), round(sum(sizes), 1)))
            if tick is not None:
                tick(elapsed)
            if time.perf_counter() > deadline:
                if partial_ok:
                    got = await stored_progress(env, read_url, topic, ends)
                    if got.applied > 0:
                        seconds = time.perf_counter() - child.started
                        note = f"stopped after {timeout_s:.0f}s at {got.applied} of {total} events"
                        return Replay(got.applied, seconds, peak, None, note, timeline)
                raise TimeoutError(f"replay did not finish in {timeout_s:.0f}s:\n{child.log_tail()}")
            await asyncio.sleep(0.02)
        code = child.proc.returncode
        if code != 0:
            raise RuntimeError(f"replay exited with {code}:\n{child.log_tail()}")
        return Replay(
            total,
            seconds,
            peak,
            code,
            None,
            timeline,
            cpu_us_per_event=cpu_s * 1e6 / total,
            machine_cpu_us_per_event=(machine_busy_seconds() - machine_at_start) * 1e6 / total,
            by_program=cpu_delta_us(programs_at_start, programs, total),
        )
    finally:
        await env.stop_child(child)
        if rec is not None and profile is not None:
            profile.update(await rec.finish())
