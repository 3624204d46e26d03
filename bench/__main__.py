"""`python -m bench [--quick] [--runs N] [--profile] [--broker apache|tansu]`: the eventfold benchmark.

Starts its own broker (Apache Kafka, 3 KRaft nodes, where Java is present;
else the embedded Tansu; `--broker` or `EVENTFOLD_BENCH_BROKER` choose) and
databases, measures the raw limits of the parts and then eventfold's services
on them, prints a table and writes `bench/results/<date>.json`
(`<date>-quick.json` for --quick) and `bench/results/latest.json`, with
`-tansu` in the names when the broker was Tansu. Every phase fails soft: a figure that cannot be
measured is `null` with the error beside it, and the run goes on. Speed is
reported, never asserted; memory is asserted: the exit code is 1 when a
service's RSS grew by more than 10% after warm-up over a steady window
(eventfold/rss.py), or when the harness itself breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bench.env import BROKERS, BenchEnv, default_broker
from bench.live import raise_open_files_limit
from bench.profile import py_spy
from bench.report import Report
from eventfold.apache_kafka import java_available


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark mode."""

    name: str
    runs: int
    produce_n: int
    consume_n: int
    upsert_n: int
    http_s: float  # measured seconds of one closed-loop HTTP run
    warmup_s: float
    accounts: int
    hot_accounts: int
    events: int  # projector topic size
    e2e_s: float
    e2e_rate: float
    peer_accounts: int
    peer_s: float
    # Quick mode stops repeating a phase once its budget is spent (one run at least).
    budget_s: dict[str, float] | None
    catchup_timeout_s: float
    replay_timeout_s: float
    drain_s: float  # e2e: how long answers may trail the last scheduled command
    run_timeout_s: float  # any single run, whatever it measures
    # One closed loop of deposits at concurrency 32, judged for memory growth (eventfold/rss.py).
    steady_s: float
    # Live: this many SSE subscribers on one query API process (one run each),
    # while deposits flow at live_rate/s for live_s.
    live_subscribers: tuple[int, ...]
    live_rate: float
    live_s: float
    # The broker is loaded until its CPU per send is steady: at least, at most, windows.
    broker_warmup_min_s: float = 150
    broker_warmup_s: float = 300
    broker_window_s: float = 15


FULL = Plan(
    "full",
    runs=3,
    produce_n=300_000,
    consume_n=300_000,
    upsert_n=200_000,
    http_s=10,
    warmup_s=2,
    accounts=10_000,
    hot_accounts=100,
    events=1_000_000,
    e2e_s=10,
    e2e_rate=500,
    peer_accounts=2_000,
    peer_s=10,
    budget_s=None,
    catchup_timeout_s=900,
    replay_timeout_s=900,
    drain_s=30,
    run_timeout_s=1800,
    steady_s=60,
    live_subscribers=(1_000, 5_000),
    live_rate=200,
    live_s=20,
)
QUICK = Plan(
    "quick",
    runs=3,
    produce_n=40_000,
    consume_n=40_000,
    upsert_n=20_000,
    http_s=1.5,
    warmup_s=0.5,
    accounts=500,
    hot_accounts=100,
    events=100_000,
    e2e_s=3,
    e2e_rate=500,
    peer_accounts=200,
    peer_s=1.5,
    budget_s={
        "raw": 20,
        "command_api": 16,
        "projector": 12,
        "replay": 12,
        "e2e": 6,
        "e2e_sustainable": 6,
        "e2e_light": 4,
        "query_api": 7,
        "peer": 7,
        "live": 8,
        "scale": 4,
    },
    catchup_timeout_s=12,
    replay_timeout_s=12,
    drain_s=2,
    run_timeout_s=60,
    steady_s=20,
    live_subscribers=(200,),
    live_rate=200,
    live_s=3,
    broker_warmup_min_s=0,
    broker_warmup_s=20,
    broker_window_s=4,
)

PHASES = ("raw", "command_api", "projector", "e2e", "query_api", "scale", "live", "peer")


class Runner:
    def __init__(self, plan: Plan, report: Report, progress: Progress, console: Console) -> None:
        self.plan = plan
        self.report = report
        self.progress = progress
        self.console = console

    async def repeat(
        self,
        section: str,
        label: str,
        total: float | None,
        run: Callable[[int, Callable[[float], None]], Awaitable[None]],
    ) -> int:
        """Call `run(i, advance)` up to plan.runs times, within the section's budget."""
        budget = (self.plan.budget_s or {}).get(section)
        started = time.perf_counter()
        done = 0
        for i in range(self.plan.runs):
            task = self.progress.add_task(f"{label} [{i + 1}/{self.plan.runs}]", total=total)

            def advance(value: float, task: Any = task) -> None:
                self.progress.update(task, completed=value)

            t0 = time.perf_counter()
            try:
                # A hung broker or service must not hang the harness (or CI).
                await asyncio.wait_for(run(i, advance), self.plan.run_timeout_s)
            except Exception as exc:
                # Keep the runs that worked; the section says why the rest are missing.
                # A shared machine has transient failures (a database restarted by
                # someone's test), so the next run is tried, unless this one timed out.
                text = f"{type(exc).__name__}: {str(exc)[:2000]}"
                self.report.error(section, f"{label} run {i + 1}: {text}")
                self.log(f"[yellow]{label} run {i + 1} failed:[/yellow] {text[:300]}")
                if isinstance(exc, TimeoutError):
                    break
                continue
            finally:
                self.progress.update(task, visible=False)
            done += 1
            took = time.perf_counter() - t0
            self.log(f"{label} run {i + 1}: {took:.1f}s")
            spent = time.perf_counter() - started
            if budget is not None and done < self.plan.runs and spent + took > budget:
                self.report.note(
                    section,
                    f"{label.replace(' ', '_')}_note",
                    f"{done} run(s): quick budget of {budget:.0f}s reached",
                )
                break
        return done

    def log(self, text: str) -> None:
        self.progress.console.log(text)

    async def phase(self, section: str, fn: Callable[[], Awaitable[None]]) -> None:
        t0 = time.perf_counter()
        self.log(f"[bold]{section}[/bold]")
        try:
            await fn()
        except Exception as exc:  # fail soft: report and go on
            text = f"{type(exc).__name__}: {str(exc)[:2000]}"
            self.report.error(section, f"{text}\n{traceback.format_exc(limit=6)[-2000:]}")
            self.log(f"[yellow]{section} failed:[/yellow] {text[:300]}")
        finally:
            took = time.perf_counter() - t0
            self.report.note(section, "phase_seconds", round(took, 1))
            self.log(f"{section} done in {took:.1f}s")

    def step(self, text: str) -> Any:
        return self.progress.add_task(text, total=None)

    def done(self, task: Any) -> None:
        self.progress.update(task, visible=False)


async def _warm_broker(r: Runner, env: BenchEnv) -> None:
    from bench.warm import warm_broker

    what = "warming the broker until its CPU per send is steady"
    task = r.progress.add_task(what, total=r.plan.broker_warmup_s)
    try:
        windows = await warm_broker(
            env.kafka("benchwarm"),
            env.broker_pids(),
            max_s=r.plan.broker_warmup_s,
            # Only a JVM broker keeps getting cheaper for minutes; the embedded one is steady from the start.
            min_s=r.plan.broker_warmup_min_s if env.broker.kind == "apache" else 0.0,
            window_s=r.plan.broker_window_s,
            progress=lambda s: r.progress.update(task, completed=s),
        )
    except Exception as exc:  # measured anyway, and said so
        r.report.error("broker", f"warm-up: {type(exc).__name__}: {exc}")
        return
    finally:
        r.done(task)
    r.report.section("broker")["warmup"] = windows
    last = windows[-1]
    r.log(f"broker warm after {last['at_s']:.0f} s: {last['us_per_send']:,.0f} µs of its CPU per send")


async def main(plan: Plan, profile: bool, console: Console, only: set[str], broker: str) -> Report:
    report = Report(plan.name)
    # Thousands of live subscribers need as many sockets here and in the query API.
    report.note("config", "open_files_limit", raise_open_files_limit())
    report.note("config", "plan", {k: v for k, v in plan.__dict__.items() if k != "budget_s"})
    env = BenchEnv(partitions=4, broker=broker)
    report.data["broker"] = {"kind": broker}
    from bench import load

    load.default_headers.update(env.auth_headers)
    report.note("config", "authenticated", bool(env.auth_headers))
    report.note("config", "partitions", env.partitions)
    report.note("config", "workdir", str(env.workdir))
    started = time.perf_counter()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        r = Runner(plan, report, progress, console)
        t = r.step("starting broker and databases")
        try:
            await env.start()
            report.data["broker"] = await env.broker_info()
            r.log(f"broker: {report.broker_line()}")
            urls = {
                "write": await env.create_database("w", migrate=["write"]),
                "read": await env.create_database("r", migrate=["read"]),
                "fill": await env.create_database("p", migrate=["read"]),
                "scratch": await env.create_database("s"),
            }
        except Exception as exc:
            report.error("setup", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
            await env.close()
            return report
        finally:
            r.done(t)
        await _warm_broker(r, env)
        try:
            from bench import phases

            if "raw" in only:
                await r.phase("raw", lambda: phases.raw(r, env, urls))
            api = None

            async def command() -> None:
                nonlocal api
                api = await phases.command_api(r, env, urls, profile)

            if only & {"command_api", "e2e", "query_api", "scale", "live"}:
                await r.phase("command_api", command)
            if "projector" in only:
                await r.phase("projector", lambda: phases.projector(r, env, urls, profile))
            readside: dict[str, Any] = {}
            if "e2e" in only:
                await r.phase("e2e", lambda: phases.e2e(r, env, urls, api, readside))
            if "query_api" in only:
                await r.phase("query_api", lambda: phases.query_api(r, env, urls, api, readside, profile))
            if "scale" in only:
                await r.phase("scale", lambda: phases.scale(r, env, urls, api, readside))
            if "live" in only:
                await r.phase("live", lambda: phases.live(r, env, urls, api, readside))
            if api is not None:
                await env.stop_child(api.child)
            for child in readside.values():
                if hasattr(child, "stop"):
                    await env.stop_child(child)
            if "peer" in only:
                await r.phase("peer", lambda: phases.peer(r, env))
            phases.ratios(report)
        finally:
            t = r.step("stopping and dropping databases")
            await env.close()
            r.done(t)
            report.data["rss"] = env.rss.report(env.rss.judge_windows())
            report.note("config", "log_errors", env.log_errors())
    report.note("config", "total_seconds", round(time.perf_counter() - started, 1))
    report.note("machine", "loadavg_at_end", list(os.getloadavg()))
    return report


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes (CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the command API, the projector and a replay in extra unmeasured runs "
        "(bench/results/profile-*.svg and *.txt)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default all: {','.join(PHASES)}); "
        "e2e, query_api, scale and live also start the command API",
    )
    parser.add_argument(
        "--broker",
        choices=BROKERS,
        default=None,
        help="apache: a 3-node Apache Kafka cluster (KRaft, needs java; jars fetched with mvn once); "
        "tansu: the embedded broker. Default EVENTFOLD_BENCH_BROKER, else apache where java is on PATH",
    )
    args = parser.parse_args(argv)
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if unknown := only - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; known: {','.join(PHASES)}")
    try:
        broker = args.broker or default_broker()
    except ValueError as exc:
        parser.error(str(exc))
    if broker == "apache" and not java_available():
        parser.error("the apache broker needs java on PATH (or use --broker tansu)")
    if args.profile and py_spy() is None:
        # Said before anything starts: a run without its profiles would cost its full time for nothing.
        parser.error("--profile needs py-spy: pip install 'eventfold[bench]'")
    plan = QUICK if args.quick else FULL
    if args.runs is not None:
        from dataclasses import replace

        plan = replace(plan, runs=max(1, args.runs))
    console = Console(stderr=True)
    # Logs and CI are not terminals: give the table room rather than 80 columns.
    out = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    # SIGTERM (CI timeouts, `timeout`) must still stop the children and drop the databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(main(plan, args.profile, console, only, broker))
    report.print(out)
    if errors := {k: v for k, v in report.data["config"].get("log_errors", {}).items() if v}:
        # A service that survives an internal error only says so in its log.
        console.print(
            f"[yellow]error lines in service logs[/yellow] ({report.data['config']['workdir']}): {errors}"
        )
    if "setup" in report.data:
        # Nothing was measured: keep the last good results where they are.
        console.print("[red]setup failed; bench/results/ left as it was[/red]")
        return 1
    grew = report.memory_failures()
    report.note("config", "verdict", "failed: memory grew at steady load" if grew else "ok")
    partial = None if only == set(PHASES) else "-".join(p for p in PHASES if p in only)
    report.note("config", "phases", sorted(only))
    for path in report.write(partial):
        console.print(f"wrote {path}")
    # Slow is reported, never failed. Failing means nothing could be measured at
    # all (no broker or database to start, or the raw limits, which need only
    # the harness and those two, all missing), or a service leaking memory.
    if "setup" in report.data or (
        all(
            report.get(f"raw.{k}") is None
            for k in ("produce_msgs_per_s", "consume_msgs_per_s", "upsert_rows_per_s")
        )
        and "raw" in only
    ):
        console.print("[red]the harness could not measure anything; see the errors above[/red]")
        return 1
    if grew:
        for line in grew:
            console.print(f"[bold red]FAILED[/bold red]: RSS grew at steady load: {line}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
