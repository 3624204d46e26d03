"""The phases of a benchmark run, each recording its figures in the report.

Every phase may fail (a service not written yet, a slow machine): the runner
catches it, stores the error in the phase's section and carries on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bench import command as cmd
from bench import projector as proj
from bench import raw as rawm
from bench import readside
from bench.env import (
    BenchEnv,
    cpu_by_program,
    cpu_delta_us,
    cpu_seconds,
    free_ports,
    machine_busy_seconds,
    machine_quiet,
)
from eventfold.db import writer_processes

if TYPE_CHECKING:
    from bench.__main__ import Runner

PREFIX_LIVE = "benchlive"
PREFIX_FILL = "benchfill"
PROJECTION = "accounts"


# -- 1. raw limits ---------------------------------------------------------


async def raw(r: Runner, env: BenchEnv, urls: dict[str, str]) -> None:
    plan, rep = r.plan, r.report
    kafka = env.kafka("benchraw")
    topic = "benchraw.raw"
    await rawm.ensure_topic(kafka, topic)
    values = rawm.sample_values()
    rep.note("raw", "value_bytes", round(sum(map(len, values)) / len(values)))

    produce: list[float] = []

    async def one_produce(i: int, advance: Any) -> None:
        produce.append(await rawm.produce_rate(kafka, topic, plan.produce_n, values, advance))

    await _soft(rep, "raw", "produce", r.repeat("raw", "raw produce", plan.produce_n, one_produce))
    rep.figure("raw", "produce_msgs_per_s", produce, "msg/s")

    consume: list[float] = []

    async def one_consume(i: int, advance: Any) -> None:
        consume.append(await rawm.consume_rate(kafka, topic, plan.consume_n, advance))

    await _soft(rep, "raw", "consume", r.repeat("raw", "raw consume", plan.consume_n, one_consume))
    rep.figure("raw", "consume_msgs_per_s", consume, "msg/s")

    upsert: list[float] = []
    rows = rawm.upsert_rows(plan.upsert_n, streams=max(1, plan.upsert_n // 10))
    rep.note("raw", "upsert_batch_rows", 1000)

    async def one_upsert(i: int, advance: Any) -> None:
        conn = await env.connect(urls["scratch"])
        try:
            upsert.append(await rawm.upsert_rate(conn, rows, 1000, advance))
        finally:
            await conn.close()

    await _soft(rep, "raw", "upsert", r.repeat("raw", "raw upsert", plan.upsert_n, one_upsert))
    rep.figure("raw", "upsert_rows_per_s", upsert, "rows/s")

    await _soft(rep, "raw", "minimal endpoint", _minimal(r, env, urls))


async def _minimal(r: Runner, env: BenchEnv, urls: dict[str, str]) -> None:
    import json

    from bench.load import build_request

    def requests(port: int) -> list[bytes]:
        return [
            build_request("POST", f"/items/acct-{i:06d}", port, json.dumps({"amount": i % 100 + 1}).encode())
            for i in range(10_000)
        ]

    await _reference_endpoint(
        r,
        env,
        "minimal",
        "bench.minimal_app:create_app",
        {**env.service_env("benchraw", urls["scratch"], urls["scratch"]), "BENCH_DB_URL": urls["scratch"]},
        requests,
        ("raw", "minimal_endpoint_", "rps", "req/s", "cpu_us_per_request"),
        "minimal endpoint",
    )


PREFIX_BY_HAND = "benchhand"


async def _by_hand(r: Runner, env: BenchEnv, urls: dict[str, str], accounts: list[str]) -> None:
    """The deposit/withdraw mix against `bench/by_hand_app.py`: the same guarantees, written by hand."""
    from eventfold.kafka import create_topics

    kafka = env.kafka(PREFIX_BY_HAND)
    await create_topics(kafka, [kafka.topic(cmd.STREAM_TYPE)])
    await _reference_endpoint(
        r,
        env,
        "by-hand",
        "bench.by_hand_app:create_app",
        {
            **env.service_env(PREFIX_BY_HAND, urls["scratch"], urls["scratch"]),
            "BENCH_DB_URL": urls["scratch"],
            "BENCH_ACCOUNTS": str(len(accounts)),
        },
        lambda port: cmd.mix_requests(port, accounts, 60_000, seed=0),
        ("command_api", "by_hand_", "commands_per_s", "2xx/s", "cpu_us_per_command"),
        "commands by hand",
    )


async def _reference_endpoint(
    r: Runner,
    env: BenchEnv,
    name: str,
    factory: str,
    child_env: dict[str, str],
    requests: Callable[[int], list[bytes]],
    names: tuple[str, str, str, str, str],
    what: str,
) -> None:
    """Serve `factory` under uvicorn and load it at concurrency 64, runs repeated.

    `names` is (section, prefix, rate, its unit, CPU): the figures are `<prefix><rate>`,
    `<prefix>p99_ms` and `<prefix><CPU>`, with each run's summary in
    `<prefix>runs_detail`.
    """
    import sys

    from bench.load import closed_loop

    plan, rep = r.plan, r.report
    section, prefix, rate_name, unit, cpu_name = names
    (port,) = free_ports(1)
    child = env.spawn(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        child_env,
    )
    try:
        await env.wait_http(child, port, "/healthz", timeout_s=60)
        load = requests(port)
        rps: list[float] = []
        p99: list[float] = []
        cpu_us: list[float] = []

        async def one(i: int, advance: Any) -> None:
            res = await closed_loop(
                port,
                load,
                concurrency=64,
                duration_s=plan.http_s,
                warmup_s=plan.warmup_s,
                on_progress=advance,
                server_pid=child.pid,
            )
            rps.append(res.ok_rps())
            p99.append(res.percentile(99))
            if (cpu := res.cpu_us_per_request()) is not None:
                cpu_us.append(cpu)
            rep.section(section).setdefault(f"{prefix}runs_detail", []).append(res.summary())

        await r.repeat(section, what, None, one)
        rep.figure(section, f"{prefix}{rate_name}", rps, unit)
        rep.figure(section, f"{prefix}p99_ms", p99, "ms")
        rep.figure(section, f"{prefix}{cpu_name}", cpu_us, "µs")
    finally:
        await env.stop_child(child)


# -- 2. command API --------------------------------------------------------


async def command_api(r: Runner, env: BenchEnv, urls: dict[str, str], profile: bool) -> cmd.CommandApi:
    from eventfold.kafka import create_topics

    plan, rep = r.plan, r.report
    kafka = env.kafka(PREFIX_LIVE)
    await create_topics(kafka, [kafka.topic("account")])
    t = r.step("starting the command API")
    try:
        api = await cmd.start(env, PREFIX_LIVE, urls["write"], urls["read"])
    finally:
        r.done(t)
    rep.note("command_api", "pid", api.child.pid)
    task = r.progress.add_task(f"opening {plan.accounts:,} accounts and depositing", total=2 * plan.accounts)
    opened = await cmd.open_accounts(api, plan.accounts, lambda n: r.progress.update(task, completed=n))
    r.done(task)
    rep.note("command_api", "accounts", plan.accounts)
    rep.note("command_api", "setup_statuses", opened)

    await _soft(rep, "command_api", "commands by hand", _by_hand(r, env, urls, api.accounts))
    await _mix(r, api, "uniform", "", api.accounts)
    await _mix(r, api, "hot", "hot_", api.accounts[: plan.hot_accounts])
    await _batches(r, api)
    await _steady(r, env, api)
    if profile:
        t = r.progress.add_task("py-spy on the command API (unmeasured run)", total=None)
        try:
            rep.note("command_api", "profile", await cmd.profile(api, 10, None))
            rep.note("command_api", "batch_profile", await cmd.profile(api, 10, None, batches=True))
        finally:
            r.done(t)
    return api


async def _mix(r: Runner, api: cmd.CommandApi, label: str, key: str, accounts: list[str]) -> None:
    """Deposits and withdrawals over `accounts`: commands/s and latency, runs repeated."""
    plan, rep = r.plan, r.report
    rates: list[float] = []
    p50: list[float] = []
    p95: list[float] = []
    p99: list[float] = []
    cpu_us: list[float] = []
    details: list[dict[str, Any]] = []

    async def one(i: int, advance: Any) -> None:
        before = await _metrics(api.port)
        res = await cmd.mix_run(
            api, accounts, duration_s=plan.http_s, warmup_s=plan.warmup_s, seed=i, progress=advance
        )
        after = await _metrics(api.port)
        rates.append(res.ok_rps())
        p50.append(res.percentile(50))
        p95.append(res.percentile(95))
        p99.append(res.percentile(99))
        if (cpu := res.cpu_us_per_request()) is not None:
            cpu_us.append(cpu)
        details.append(
            {
                **res.summary(),
                "status_counts": cmd.status_counts(res),
                # Includes the warm-up: the server cannot tell it apart.
                "server": cmd.metrics_delta(before, after, res.count) if before and after else {},
            }
        )

    await r.repeat("command_api", f"commands {label}", None, one)
    rep.figure("command_api", f"{key}commands_per_s", rates, "2xx/s")
    rep.figure("command_api", f"{key}p50_ms", p50, "ms")
    rep.figure("command_api", f"{key}p95_ms", p95, "ms")
    rep.figure("command_api", f"{key}p99_ms", p99, "ms")
    rep.figure("command_api", f"{key}cpu_us_per_command", cpu_us, "µs")
    rep.note("command_api", f"{key}runs_detail", details)
    rep.note("command_api", f"{key}status_counts", _sum_counts([d["status_counts"] for d in details]))


async def _batches(r: Runner, api: cmd.CommandApi) -> None:
    """`POST /commands` with batches of deposits: commands/s when HTTP is paid once per batch."""
    plan, rep = r.plan, r.report
    rates: list[float] = []
    cpu_us: list[float] = []
    details: list[dict[str, Any]] = []

    async def one(i: int, advance: Any) -> None:
        res = await cmd.batch_run(
            api, size=cmd.BATCH_SIZE, duration_s=plan.http_s, warmup_s=plan.warmup_s, seed=i, progress=advance
        )
        rates.append(res.ok_commands_per_s())
        if (cpu := res.cpu_us_per_command()) is not None:
            cpu_us.append(cpu)
        details.append(
            {**res.load.summary(), "outcomes": {str(k): v for k, v in sorted(res.outcomes.items())}}
        )

    await r.repeat("command_api", f"batches of {cmd.BATCH_SIZE} commands", None, one)
    rep.note("command_api", "batch_size", cmd.BATCH_SIZE)
    rep.note("command_api", "batch_concurrency", cmd.BATCH_CONCURRENCY)
    rep.figure("command_api", "batch_commands_per_s", rates, "2xx commands/s")
    rep.figure("command_api", "batch_cpu_us_per_command", cpu_us, "µs")
    rep.note("command_api", "batch_runs_detail", details)


async def _steady(r: Runner, env: BenchEnv, api: cmd.CommandApi) -> None:
    """One long run at one load, over which the command API's RSS must stay flat."""
    plan, rep = r.plan, r.report
    task = r.progress.add_task(
        f"steady deposits at concurrency {cmd.STEADY_CONCURRENCY} for {plan.steady_s:.0f}s (RSS watched)",
        total=None,
    )
    try:
        with env.rss.steady(api.child.pid, "command_api.steady"):
            res = await asyncio.wait_for(
                cmd.steady_run(
                    api, duration_s=plan.steady_s, progress=lambda n: r.progress.update(task, completed=n)
                ),
                plan.steady_s + plan.run_timeout_s,
            )
    finally:
        r.done(task)
    rep.note("command_api", "steady_concurrency", cmd.STEADY_CONCURRENCY)
    rep.value("command_api", "steady_commands_per_s", res.ok_rps(), "2xx/s")
    rep.note("command_api", "steady_commands", res.count)
    rep.note("command_api", "steady_status_counts", cmd.status_counts(res))


async def _metrics(port: int) -> dict[str, float]:
    try:
        return await cmd.metrics(port)
    except Exception:  # metrics are a bonus; the figures do not depend on them
        return {}


def _sum_counts(items: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in items:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# -- 3. projector catch-up and replay ----------------------------------------


async def projector(r: Runner, env: BenchEnv, urls: dict[str, str], profile: bool = False) -> None:
    plan, rep = r.plan, r.report
    kafka = env.kafka(PREFIX_FILL)
    task = r.progress.add_task(f"filling the topic with {plan.events:,} events", total=plan.events)
    ends, fill_rate = await proj.fill(kafka, plan.events, lambda n: r.progress.update(task, completed=n))
    r.done(task)
    rep.note("projector", "events", sum(ends.values()))
    rep.note("projector", "end_offsets", {str(k): v for k, v in sorted(ends.items())})
    rep.note("projector", "fill_events_per_s", round(fill_rate, 1))

    # `eventfold serve projector` as it runs by default: on PostgreSQL, one
    # member per core (at most 4) in one consumer group, sharing the partitions.
    members = writer_processes(urls["fill"], 0)
    rep.note("projector", "default_processes", members)
    await _catch_ups(r, env, urls, ends, None, "")
    if members > 1:  # what the members buy over one process
        await _catch_ups(r, env, urls, ends, 1, "one_process_")
    if profile:
        t = r.step("py-spy on the projector (unmeasured catch-up)")
        found: dict[str, object] = {}
        try:
            await proj.catch_up_run(
                env,
                PREFIX_FILL,
                urls["fill"],
                urls["write"],
                ends,
                timeout_s=plan.catchup_timeout_s * 3,
                partial_ok=True,
                profile=found,
            )
        except Exception as exc:
            found["error"] = repr(exc)
        finally:
            r.done(t)
        rep.note("projector", "profile", found)
    await replay(r, env, urls, ends, profile)


async def _catch_ups(
    r: Runner, env: BenchEnv, urls: dict[str, str], ends: dict[int, int], processes: int | None, key: str
) -> None:
    """Catch-up runs of the projector (`processes` members, None: its default) on an empty read store."""
    plan, rep = r.plan, r.report
    rates: list[float] = []
    walls: list[float] = []
    rss: list[float] = []
    cpu: list[float] = []
    machine_cpu: list[float] = []

    async def one(i: int, advance: Any) -> None:
        res = await proj.catch_up_run(
            env,
            PREFIX_FILL,
            urls["fill"],
            urls["write"],
            ends,
            timeout_s=plan.catchup_timeout_s,
            progress=advance,
            partial_ok=plan.budget_s is not None,
            processes=processes,
        )
        rates.append(res.events_per_s)
        walls.append(res.wall_s)
        if res.peak_rss_mb is not None:
            rss.append(res.peak_rss_mb)
        if res.cpu_us_per_event is not None:
            cpu.append(res.cpu_us_per_event)
        if res.machine_cpu_us_per_event is not None:
            machine_cpu.append(res.machine_cpu_us_per_event)
        if res.by_program is not None:
            by_program = rep.section("projector").setdefault(f"{key}cpu_by_program_us_per_event", [])
            by_program.append(res.by_program)
        rep.note("projector", "projections", res.projections)
        if res.partial:
            rep.note("projector", f"{key}partial", res.partial)

    label = "projector catch-up" if processes is None else f"projector catch-up, {processes} process(es)"
    try:
        await r.repeat("projector", label, sum(ends.values()), one)
    finally:
        rep.figure("projector", f"{key}events_per_s", rates, "ev/s")
        rep.figure("projector", f"{key}wall_s", walls, "s")
        rep.figure("projector", f"{key}peak_rss_mb", rss, "MB")
        rep.figure("projector", f"{key}cpu_us_per_event", cpu, "µs")
        # Everything busy on the machine per event (PostgreSQL, the broker, this
        # harness): its cores over this is the rate the machine could give at best.
        rep.figure("projector", f"{key}machine_cpu_us_per_event", machine_cpu, "µs")


async def replay(
    r: Runner, env: BenchEnv, urls: dict[str, str], ends: dict[int, int], profile: bool = False
) -> None:
    plan, rep = r.plan, r.report
    total = sum(ends.values())
    rates: list[float] = []
    secs: list[float] = []
    rss: list[float] = []
    cpu: list[float] = []
    machine_cpu: list[float] = []

    async def one(i: int, advance: Any) -> None:
        res = await proj.replay_run(
            env,
            PREFIX_FILL,
            urls["fill"],
            urls["write"],
            ends,
            projection=PROJECTION,
            timeout_s=plan.replay_timeout_s,
            tick=advance,
            partial_ok=plan.budget_s is not None,
        )
        rates.append(res.events / res.seconds)
        secs.append(res.seconds)
        if res.peak_rss_mb is not None:
            rss.append(res.peak_rss_mb)
        if res.cpu_us_per_event is not None:
            cpu.append(res.cpu_us_per_event)
        if res.machine_cpu_us_per_event is not None:
            machine_cpu.append(res.machine_cpu_us_per_event)
        if res.by_program is not None:
            rep.section("replay").setdefault("cpu_by_program_us_per_event", []).append(res.by_program)
        if res.partial:
            rep.note("replay", "partial", res.partial)
        if i == 0 and res.rss_timeline:
            rep.note("replay", "rss_timeline_mb", res.rss_timeline)

    try:
        await r.repeat("replay", "replay", None, one)
    except Exception as exc:
        rep.error("replay", f"{type(exc).__name__}: {exc}")
    rep.note("replay", "events", total)
    rep.figure("replay", "events_per_s", rates, "ev/s")
    rep.figure("replay", "seconds", secs, "s")
    rate = rep.get("replay.events_per_s")
    rep.value("replay", "seconds_per_1m_events", 1_000_000 / rate if rate else None, "s")
    rep.figure("replay", "peak_rss_mb", rss, "MB")
    rep.figure("replay", "cpu_us_per_event", cpu, "µs")
    rep.figure("replay", "machine_cpu_us_per_event", machine_cpu, "µs")
    if profile:
        t = r.step("py-spy on the replay (unmeasured)")
        found: dict[str, object] = {}
        try:
            await proj.replay_run(
                env,
                PREFIX_FILL,
                urls["fill"],
                urls["write"],
                ends,
                projection=PROJECTION,
                timeout_s=plan.replay_timeout_s * 3,
                partial_ok=True,
                profile=found,
            )
        except Exception as exc:
            found["error"] = repr(exc)
        finally:
            r.done(t)
        rep.note("replay", "profile", found)


# -- 4. end to end -----------------------------------------------------------


async def read_side(r: Runner, env: BenchEnv, urls: dict[str, str], children: dict[str, Any]) -> None:
    """The projector and the query API over the command API's topics, started once for every phase."""
    if "query" in children:
        return
    t = r.step("starting the projector and the query API")
    try:
        children["projector"] = await readside.projector_for(env, PREFIX_LIVE, urls["write"], urls["read"])
        qchild, qport = await readside.start_query_api(env, PREFIX_LIVE, urls["write"], urls["read"])
        children["query"] = qchild
        children["query_port"] = qport
    finally:
        r.done(t)


async def caught_up(r: Runner, env: BenchEnv, urls: dict[str, str], children: dict[str, Any]) -> float:
    """Wait until the projector has applied every command event so far; the seconds it took."""
    kafka = env.kafka(PREFIX_LIVE)
    topic = kafka.topic("account")
    hw = await readside.high_watermarks(kafka, topic)
    task = r.progress.add_task(
        f"projector catching up {sum(hw.values()):,} command events", total=sum(hw.values())
    )
    try:
        caught = await proj.wait_caught_up(
            env,
            children["projector"],
            urls["read"],
            topic,
            hw,
            timeout_s=max(60.0, r.plan.catchup_timeout_s),
            progress=lambda n: r.progress.update(task, completed=n),
        )
    finally:
        r.done(task)
    return float(caught.wall_s)


async def e2e(
    r: Runner, env: BenchEnv, urls: dict[str, str], api: cmd.CommandApi | None, children: dict[str, Any]
) -> None:
    plan, rep = r.plan, r.report
    if api is None:
        raise RuntimeError("the command API did not start; nothing to measure end to end")
    await read_side(r, env, urls, children)
    qport = children["query_port"]
    rep.note("e2e", "catch_up_before_s", round(await caught_up(r, env, urls, children), 2))
    kafka = env.kafka(PREFIX_LIVE)
    topic = kafka.topic("account")

    async def settle() -> None:
        """Let the previous run's backlog drain, so each run starts from an idle system.

        Commands whose clients gave up are still executed by the server: wait
        until its command count stops moving, then for the projector to apply
        what is on the topic.
        """
        last = -1.0
        while True:
            done = (await _metrics(api.port)).get("eventfold_command_seconds_count", 0.0)
            if done == last:
                break
            last = done
            await asyncio.sleep(0.3)
        marks = await readside.high_watermarks(kafka, topic)
        await proj.wait_caught_up(
            env, None, urls["read"], topic, marks, timeout_s=plan.drain_s * 2, partial_ok=True
        )

    # First at a rate the command API sustains here (half what it measured), so the
    # figure shows the projector and query path rather than a command backlog.
    pids = {
        "command_api": api.child.pid,
        "projector": children["projector"].pid,
        "query_api": children["query"].pid,
    }
    # Latency, unlike throughput, suffers from whatever else still runs: an earlier
    # phase's bulk writes leave autovacuum and checkpoint work behind them.
    rep.note("e2e", "settle_database_s", round(await env.settle_database(), 1))
    rep.note("e2e", "machine_busy_cores_before", await machine_quiet())
    # A light load first: the latency of the path itself, with the CPU each
    # service spends per command (what caps the rate on a small machine).
    await _e2e_at(r, api, qport, LIGHT_RATE, "light_", settle, pids)
    measured = rep.get("command_api.commands_per_s")
    if measured:
        await _sustainable(r, api, qport, min(plan.e2e_rate, measured / 2), settle, pids)
    await _e2e_at(r, api, qport, plan.e2e_rate, "", settle, pids)


LIGHT_RATE = 50.0
SUSTAINABLE_P99_MS = 250.0


async def _sustainable(
    r: Runner, api: cmd.CommandApi, qport: int, start: float, settle: Any, pids: dict[str, int]
) -> None:
    """The highest rate of a ladder (from `start`, down by 0.7 a step) whose p99 stays within 250 ms.

    A rate the machine does not sustain builds a backlog, and its p99 grows
    with the run's length; one it sustains keeps the p99 of the path itself.
    The `sustainable_*` figures are those of the last rate tried.
    """
    rep = r.report
    tried: list[list[float | None]] = []
    rate = start
    while True:
        rate = max(LIGHT_RATE, float(round(rate)))
        await _e2e_at(r, api, qport, rate, "sustainable_", settle, pids)
        p99 = rep.get("e2e.sustainable_p99_ms")
        tried.append([rate, p99])
        held = p99 is not None and p99 <= SUSTAINABLE_P99_MS
        if held or rate <= LIGHT_RATE:
            break
        rate *= 0.7
    rep.note("e2e", "sustainable_tried", tried)
    rep.value("e2e", "sustainable_rate", rate if held else None, "commands/s")


async def _e2e_at(
    r: Runner, api: cmd.CommandApi, qport: int, rate: float, key: str, settle: Any, pids: dict[str, int]
) -> None:
    plan, rep = r.plan, r.report
    p50: list[float] = []
    p99: list[float] = []
    details: list[dict[str, Any]] = []

    async def one(i: int, advance: Any) -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(settle(), plan.drain_s * 3 + 10)
        except Exception as exc:  # a lagging start is noted, not fatal
            rep.note("e2e", f"{key}settle_note", repr(exc)[:300])
        r.log(f"settled in {time.perf_counter() - t0:.1f}s")
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        programs = cpu_by_program()
        res = await readside.e2e_run(
            api.port,
            qport,
            api.accounts,
            rate=rate,
            duration_s=plan.e2e_s,
            seed=100 + i,
            progress=advance,
            drain_s=plan.drain_s,
        )
        s = res.summary()
        s["cpu_ms_per_command"] = {
            name: round((now - cpu0[name]) * 1000 / max(1, res.sent), 2)
            for name, pid in pids.items()
            if (now := cpu_seconds(pid)) is not None and cpu0[name] is not None
        }
        # The whole machine's CPU per command by program: background work shows here.
        by_program = cpu_delta_us(programs, cpu_by_program(), max(1, res.sent))
        s["machine_cpu_us_per_command_by_program"] = by_program
        details.append(s)
        if s["visible"] or s["unanswered_counted_as_lower_bound"]:
            p50.append(s["p50_ms"])
            p99.append(s["p99_ms"])

    label = f"end to end at {rate:g}/s"
    await r.repeat("e2e" if not key else "e2e_" + key.rstrip("_"), label, rate * plan.e2e_s, one)
    rep.figure("e2e", f"{key}p50_ms", p50, "ms")
    rep.figure("e2e", f"{key}p99_ms", p99, "ms")
    rep.note("e2e", f"{key}rate", rate)
    rep.note("e2e", f"{key}runs_detail", details)
    if details:
        rep.note("e2e", f"{key}cpu_ms_per_command", details[-1]["cpu_ms_per_command"])
    if not p99:
        rep.error("e2e", f"{label}: no command became visible: {details[-1] if details else 'no run'}")


# -- 5. query API ------------------------------------------------------------


async def query_api(
    r: Runner,
    env: BenchEnv,
    urls: dict[str, str],
    api: cmd.CommandApi | None,
    children: dict[str, Any],
    profile: bool = False,
) -> None:
    plan, rep = r.plan, r.report
    if "query_port" not in children:
        child, port = await readside.start_query_api(env, PREFIX_LIVE, urls["write"], urls["read"])
        children["query"], children["query_port"] = child, port
    port = children["query_port"]
    accounts = api.accounts if api is not None and api.accounts else cmd.account_ids(plan.accounts)
    # The bank's own route (an app's hand-written one) and the generic view.
    await _reads(r, env, children, accounts, "query API", "", readside.ACCOUNT_PATH)
    await _reads(r, env, children, accounts, "query API views", "views_", readside.VIEW_PATH)
    await _reads(r, env, children, accounts, "query API filtered pages of 50", "page_", readside.PAGE_PATH)
    if profile:
        from bench.profile import Recording

        # The bank's GET by id, then the filtered page: each its own flame graph.
        for name, key, path in (
            ("query-api", "profile", readside.ACCOUNT_PATH),
            ("query-api-page", "page_profile", readside.PAGE_PATH),
        ):
            t = r.step(f"py-spy on the query API, {path} (unmeasured run)")
            try:
                rec = Recording(children["query"].pid, name, 10)
                await asyncio.sleep(0.5)
                res = await readside.query_run(port, accounts, duration_s=11, warmup_s=0, seed=99, path=path)
                found = await rec.finish()
                found["rps_while_profiled"] = round(res.rps, 1)
                rep.note("query_api", key, found)
            finally:
                r.done(t)


async def _reads(
    r: Runner,
    env: BenchEnv,
    children: dict[str, Any],
    accounts: list[str],
    label: str,
    key: str,
    path: str,
) -> None:
    """GETs of one account at a time, by `path`, at concurrency 64; runs repeated, RSS judged."""
    plan, rep = r.plan, r.report
    query = children["query"]
    rps: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    cpu_us: list[float] = []
    details: list[dict[str, Any]] = []

    async def one(i: int, advance: Any) -> None:
        res = await readside.query_run(
            children["query_port"],
            accounts,
            duration_s=plan.http_s,
            warmup_s=plan.warmup_s,
            seed=i,
            progress=advance,
            server_pid=query.pid,
            path=path,
        )
        rps.append(res.ok_rps(lambda s: s == 200))
        p50.append(res.percentile(50))
        p99.append(res.percentile(99))
        if (cpu := res.cpu_us_per_request()) is not None:
            cpu_us.append(cpu)
        details.append(res.summary())

    with env.rss.steady(query.pid, f"query_api.{key.rstrip('_')}" if key else "query_api"):
        await r.repeat("query_api", label, None, one)
    rep.figure("query_api", f"{key}requests_per_s", rps, "200/s")
    rep.figure("query_api", f"{key}p50_ms", p50, "ms")
    rep.figure("query_api", f"{key}p99_ms", p99, "ms")
    rep.figure("query_api", f"{key}cpu_us_per_request", cpu_us, "µs")
    rep.note("query_api", f"{key}runs_detail", details)


# -- 6. live subscribers -----------------------------------------------------


async def live(
    r: Runner, env: BenchEnv, urls: dict[str, str], api: cmd.CommandApi | None, children: dict[str, Any]
) -> None:
    """SSE subscribers on one query API process while deposits flow (bench/live.py)."""
    plan, rep = r.plan, r.report
    if api is None:
        raise RuntimeError("the command API did not start; no changes to follow")
    await read_side(r, env, urls, children)
    rep.note("live", "catch_up_before_s", round(await caught_up(r, env, urls, children), 2))
    rep.note("live", "rate", plan.live_rate)
    accounts = api.accounts or cmd.account_ids(plan.accounts)
    for n in plan.live_subscribers:
        await _live_at(r, api, children, accounts, n)


async def _live_at(
    r: Runner, api: cmd.CommandApi, children: dict[str, Any], accounts: list[str], n: int
) -> None:
    from bench import live as livem

    plan, rep = r.plan, r.report
    p50: list[float] = []
    p99: list[float] = []
    kb: list[float] = []
    cpu: list[float] = []
    details: list[dict[str, Any]] = []

    async def one(i: int, advance: Any) -> None:
        res = await livem.live_run(
            api.port,
            children["query_port"],
            children["query"].pid,
            accounts,
            subscribers=n,
            rate=plan.live_rate,
            duration_s=plan.live_s,
            seed=200 + i,
            drain_s=plan.drain_s * 5,
            progress=advance,
        )
        s = res.summary()
        details.append(s)
        p50.append(s["p50_ms"])
        p99.append(s["p99_ms"])
        if s["idle_kb_per_subscriber"] is not None:
            kb.append(s["idle_kb_per_subscriber"])
        if s["cpu_us_per_change"] is not None:
            cpu.append(s["cpu_us_per_change"])

    await r.repeat("live", f"{n:,} live subscribers", n, one)
    rep.figure("live", f"p50_ms_{n}", p50, "ms")
    rep.figure("live", f"p99_ms_{n}", p99, "ms")
    rep.figure("live", f"kb_per_idle_subscriber_{n}", kb, "KB")
    rep.figure("live", f"cpu_us_per_change_{n}", cpu, "µs")
    rep.note("live", f"runs_detail_{n}", details)


# -- 6b. scale-out on this machine ---------------------------------------------


async def scale(
    r: Runner, env: BenchEnv, urls: dict[str, str], api: cmd.CommandApi | None, children: dict[str, Any]
) -> None:
    """One process of each HTTP service against two, the same total load (64 connections).

    The second command API shares the write store (per-stream order is the
    store's), the second query API the read store; each gets half the
    connections. On a machine whose cores the broker, PostgreSQL and the load
    already share, the figure says what a second process buys here, not on
    a cluster (README, Performance).
    """
    plan = r.plan
    if api is None:
        raise RuntimeError("the scale phase needs the command API phase")
    second = await cmd.start(env, PREFIX_LIVE, urls["write"], urls["read"])
    second.accounts = api.accounts

    async def commands(server: cmd.CommandApi, connections: int, seed: int) -> float:
        res = await cmd.mix_run(
            server,
            api.accounts,
            duration_s=plan.http_s,
            warmup_s=plan.warmup_s,
            seed=seed,
            concurrency=connections,
        )
        return res.ok_rps()

    try:
        await _one_then_two(
            r, "commands, {n} command API process(es)", "commands_per_s", "2xx/s", commands, [api, second]
        )
    finally:
        await env.stop_child(second.child)
    if "query_port" not in children:
        return
    query2, port2 = await readside.start_query_api(env, PREFIX_LIVE, urls["write"], urls["read"])

    async def gets(port: int, connections: int, seed: int) -> float:
        res = await readside.query_run(
            port,
            api.accounts,
            duration_s=plan.http_s,
            warmup_s=plan.warmup_s,
            seed=seed,
            concurrency=connections,
        )
        return res.ok_rps(lambda s: s == 200)

    try:
        ports = [children["query_port"], port2]
        await _one_then_two(r, "GET by id, {n} query API process(es)", "gets_per_s", "req/s", gets, ports)
    finally:
        await env.stop_child(query2)


async def _one_then_two(
    r: Runner,
    label: str,
    figure: str,
    unit: str,
    load: Callable[[Any, int, int], Awaitable[float]],
    targets: list[Any],
) -> None:
    """`load(target, connections, seed)` on the first target with 64 connections, then split over both."""
    for n in (1, len(targets)):
        rates: list[float] = []

        async def one(
            i: int, advance: Any, chosen: list[Any] = targets[:n], rates: list[float] = rates
        ) -> None:
            got = await asyncio.gather(
                *(load(t, 64 // len(chosen), 100 * i + k) for k, t in enumerate(chosen))
            )
            rates.append(sum(got))

        await r.repeat("scale", label.format(n=n), None, one)
        r.report.figure("scale", f"{figure}_{n}_processes", rates, unit)


# -- 7. peer -----------------------------------------------------------------


async def peer(r: Runner, env: BenchEnv) -> None:
    from bench import peer as peerm

    plan, rep = r.plan, r.report
    why = peerm.available()
    if why is not None:
        rep.figure("peer", "eventsourcing_saves_per_s", [])
        rep.figure("peer", "eventsourcing_projection_events_per_s", [])
        rep.error("peer", why)
        return
    url = await env.create_database("es")
    from sqlalchemy.engine import make_url

    threads = 8
    p = await asyncio.to_thread(peerm.Peer, make_url(url).database or "", threads)
    rep.note("peer", "library", _version("eventsourcing"))
    rep.note("peer", "threads", threads)
    rep.note("peer", "accounts", plan.peer_accounts)
    try:
        t = r.step(f"eventsourcing: opening {plan.peer_accounts:,} accounts")
        await asyncio.to_thread(p.open_accounts, plan.peer_accounts)
        r.done(t)
        saves: list[float] = []

        async def one(i: int, advance: Any) -> None:
            saves.append(await asyncio.to_thread(p.saves, plan.peer_s, advance))

        await r.repeat("peer", "eventsourcing saves", None, one)
        rep.figure("peer", "eventsourcing_saves_per_s", saves, "saves/s")
        proj_rates: list[float] = []
        proj_cpu: list[float] = []

        async def one_proj(i: int, advance: Any) -> None:
            busy, programs = machine_busy_seconds(), cpu_by_program()
            rate, n = await asyncio.to_thread(p.projection)
            proj_rates.append(rate)
            if n:  # everything busy meanwhile: this process, PostgreSQL, the idle broker
                proj_cpu.append((machine_busy_seconds() - busy) * 1e6 / n)
                rep.section("peer").setdefault("projection_cpu_by_program_us_per_event", []).append(
                    cpu_delta_us(programs, cpu_by_program(), n)
                )
            rep.note("peer", "projection_events", n)

        await r.repeat("peer", "eventsourcing projection", None, one_proj)
        rep.figure("peer", "eventsourcing_projection_events_per_s", proj_rates, "ev/s")
        rep.figure("peer", "eventsourcing_projection_machine_cpu_us_per_event", proj_cpu, "µs")
    finally:
        await asyncio.to_thread(p.close)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# -- 6. ratios ---------------------------------------------------------------


def ratios(rep: Any) -> None:
    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    raw_min = None
    consume, upsert = rep.get("raw.consume_msgs_per_s"), rep.get("raw.upsert_rows_per_s")
    if consume is not None and upsert is not None:
        raw_min = min(consume, upsert)
    rep.value(
        "ratios",
        "command_vs_minimal",
        div(rep.get("command_api.commands_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    # The same guarantees written by hand, one transaction and one publish per
    # request: how far the one-INSERT reference is from any endpoint that keeps them.
    rep.value(
        "ratios",
        "by_hand_vs_minimal",
        div(rep.get("command_api.by_hand_commands_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    rep.value(
        "ratios",
        "command_vs_by_hand",
        div(rep.get("command_api.commands_per_s"), rep.get("command_api.by_hand_commands_per_s")),
    )
    rep.value(
        "ratios",
        "batch_vs_minimal",
        div(rep.get("command_api.batch_commands_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    # CPU per request, the minimal endpoint's over the command's: the share of the
    # minimal endpoint's rate a command API alone on its cores would reach.
    rep.value(
        "ratios",
        "command_cpu_vs_minimal",
        div(rep.get("raw.minimal_endpoint_cpu_us_per_request"), rep.get("command_api.cpu_us_per_command")),
    )
    rep.value(
        "ratios",
        "query_cpu_vs_minimal",
        div(rep.get("raw.minimal_endpoint_cpu_us_per_request"), rep.get("query_api.cpu_us_per_request")),
    )
    rep.value(
        "ratios",
        "views_cpu_vs_minimal",
        div(
            rep.get("raw.minimal_endpoint_cpu_us_per_request"), rep.get("query_api.views_cpu_us_per_request")
        ),
    )
    rep.value(
        "ratios",
        "page_vs_minimal",
        div(rep.get("query_api.page_requests_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    rep.value(
        "ratios",
        "get_vs_minimal",
        div(rep.get("query_api.views_requests_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    rep.value(
        "ratios",
        "hot_vs_minimal",
        div(rep.get("command_api.hot_commands_per_s"), rep.get("raw.minimal_endpoint_rps")),
    )
    # Tail latency against the minimal endpoint's at the same concurrency (lower is better).
    for name, p99 in (
        ("command_p99_vs_minimal", "command_api.p99_ms"),
        ("views_p99_vs_minimal", "query_api.views_p99_ms"),
    ):
        rep.value("ratios", name, div(rep.get(p99), rep.get("raw.minimal_endpoint_p99_ms")))
    rep.value("ratios", "projector_vs_raw", div(rep.get("projector.events_per_s"), raw_min))
    # Both build the same read model: accounts and their ledger.
    rep.value(
        "ratios",
        "projector_vs_peer",
        div(rep.get("projector.events_per_s"), rep.get("peer.eventsourcing_projection_events_per_s")),
    )
    rep.value(
        "ratios",
        "saves_vs_peer",
        div(rep.get("command_api.commands_per_s"), rep.get("peer.eventsourcing_saves_per_s")),
    )
    rep.value("ratios", "replay_vs_raw", div(rep.get("replay.events_per_s"), raw_min))
    rep.note("ratios", "raw_min_consume_upsert", raw_min)
    # What a second process of each service bought on this machine.
    for name, one, two in (
        ("projector_default_vs_one", "projector.one_process_events_per_s", "projector.events_per_s"),
        ("commands_two_vs_one", "scale.commands_per_s_1_processes", "scale.commands_per_s_2_processes"),
        ("gets_two_vs_one", "scale.gets_per_s_1_processes", "scale.gets_per_s_2_processes"),
    ):
        rep.value("ratios", name, div(rep.get(two), rep.get(one)))


async def _soft(rep: Any, section: str, what: str, aw: Any) -> None:
    """Run one measure; its failure is recorded and the section goes on."""
    import traceback

    try:
        await aw
    except asyncio.CancelledError as exc:
        # A client library's internal timeout can surface as a CancelledError
        # (aiokafka's fetch under heavy load); only a cancel of this run stops it.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        rep.error(section, f"{what}: cancelled inside: {exc!r}\n{traceback.format_exc(limit=4)}")
    except Exception as exc:
        rep.error(section, f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
