"""`python -m bench [--quick] [--runs N] [--profile]`: the eventfold benchmark.

Starts its own broker and databases, measures the raw limits of the parts and
then eventfold's services on them, prints a table and writes
`bench/results/<date>.json` (`<date>-quick.json` for --quick) and
`bench/results/latest.json`. Every phase fails soft: a figure that cannot be
measured is `null` with the error beside it, and the run goes on. The exit
code is 0 unless the harness itself breaks; speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bench.env import BenchEnv
from bench.report import Report


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


FULL = Plan(
    "full", runs=3, produce_n=300_000, consume_n=300_000, upsert_n=200_000, http_s=10, warmup_s=2,
    accounts=10_000, hot_accounts=100, events=1_000_000, e2e_s=10, e2e_rate=500,
    peer_accounts=2_000, peer_s=10, budget_s=None, catchup_timeout_s=900, replay_timeout_s=900,
)
QUICK = Plan(
    "quick", runs=3, produce_n=40_000, consume_n=40_000, upsert_n=20_000, http_s=2, warmup_s=0.5,
    accounts=1_000, hot_accounts=100, events=100_000, e2e_s=3, e2e_rate=500,
    peer_accounts=200, peer_s=1.5,
    budget_s={
        "raw": 22, "command_api": 26, "projector": 18, "replay": 14, "e2e": 12, "query_api": 8,
        "peer": 8,
    },
    catchup_timeout_s=25, replay_timeout_s=20,
)

PREFIX_LIVE = "benchlive"  # command API, live projector, query API
PREFIX_FILL = "benchfill"  # the projector topic filled directly
PROJECTION = "accounts"


class Runner:
    def __init__(self, plan: Plan, report: Report, progress: Progress, console: Console) -> None:
        self.plan = plan
        self.report = report
        self.progress = progress
        self.console = console

    async def repeat(
        self, section: str, label: str, total: float | None,
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
                await run(i, advance)
            finally:
                self.progress.update(task, visible=False)
            done += 1
            took = time.perf_counter() - t0
            self.log(f"{label} run {i + 1}: {took:.1f}s")
            spent = time.perf_counter() - started
            if budget is not None and done < self.plan.runs and spent + took > budget:
                self.report.note(section, f"{label.replace(' ', '_')}_note",
                                 f"{done} run(s): quick budget of {budget:.0f}s reached")
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
            self.report.error(section, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
            self.log(f"[yellow]{section} failed:[/yellow] {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            took = time.perf_counter() - t0
            self.report.note(section, "phase_seconds", round(took, 1))
            self.log(f"{section} done in {took:.1f}s")

    def step(self, text: str) -> Any:
        return self.progress.add_task(text, total=None)

    def done(self, task: Any) -> None:
        self.progress.update(task, visible=False)


async def main(plan: Plan, profile: bool, console: Console) -> Report:
    report = Report(plan.name)
    report.note("config", "plan", {k: v for k, v in plan.__dict__.items() if k != "budget_s"})
    env = BenchEnv(partitions=4)
    from bench import load

    load.default_headers.update(env.auth_headers)
    report.note("config", "authenticated", bool(env.auth_headers))
    report.note("config", "partitions", env.partitions)
    report.note("config", "workdir", str(env.workdir))
    started = time.perf_counter()
    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed:,.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        r = Runner(plan, report, progress, console)
        t = r.step("starting broker and databases")
        try:
            await env.start()
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
        try:
            from bench import phases

            await r.phase("raw", lambda: phases.raw(r, env, urls))
            api = None

            async def command() -> None:
                nonlocal api
                api = await phases.command_api(r, env, urls, profile)

            await r.phase("command_api", command)
            await r.phase("projector", lambda: phases.projector(r, env, urls))
            readside: dict[str, Any] = {}
            await r.phase("e2e", lambda: phases.e2e(r, env, urls, api, readside))
            await r.phase("query_api", lambda: phases.query_api(r, env, urls, api, readside))
            if api is not None:
                await env.stop_child(api.child)
            for child in readside.values():
                if hasattr(child, "stop"):
                    await env.stop_child(child)
            await r.phase("peer", lambda: phases.peer(r, env))
            phases.ratios(report)
        finally:
            t = r.step("stopping and dropping databases")
            await env.close()
            r.done(t)
    report.note("config", "total_seconds", round(time.perf_counter() - started, 1))
    return report


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes (CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument(
        "--profile", action="store_true",
        help="py-spy the command API during an extra unmeasured run (bench/results/profile-*.svg)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs is not None:
        from dataclasses import replace

        plan = replace(plan, runs=max(1, args.runs))
    console = Console(stderr=True)
    out = Console()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    # SIGTERM (CI timeouts, `timeout`) must still stop the children and drop the databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(main(plan, args.profile, console))
    report.print(out)
    for path in report.write():
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
