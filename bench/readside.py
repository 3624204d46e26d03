"""The read side over HTTP: end-to-end visibility and query API throughput.

End to end: commands are sent open loop at a fixed rate (each at its
scheduled time, whatever the previous ones are doing); a command's latency is
from its scheduled time until a `GET /accounts/{id}?wait_for=<position>` on
the query API shows its version. Measuring from the schedule, not from the
send, keeps a backlog's queueing delay in the numbers.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from bench.command import command_request
from bench.env import BenchEnv, Child, free_ports
from bench.load import Client, LoadResult, build_request, closed_loop, percentile
from eventfold.kafka import fetch_highwaters
from eventfold.settings import KafkaSettings


async def start_query_api(env: BenchEnv, prefix: str, write_url: str, read_url: str) -> tuple[Child, int]:
    (port,) = free_ports(1)
    child = env.eventfold(
        "query-api", ["serve", "query-api", "--port", str(port)], env.service_env(prefix, write_url, read_url)
    )
    await env.wait_http(child, port, "/healthz", timeout_s=60)
    return child, port


async def high_watermarks(kafka: KafkaSettings, topic: str, timeout_s: float = 20.0) -> dict[int, int]:
    """Per-partition high-watermarks (ListOffsets, or a fetch response where the broker needs it)."""
    found = await fetch_highwaters(kafka, [topic], timeout_s=timeout_s, require_all=True)
    return {p: hw for (_, p), hw in found.items()}


@dataclass
class E2eResult:
    rate_target: float
    sent: int = 0
    duration_s: float = 0.0
    visible_ms: array[float] = field(default_factory=lambda: array("d"))
    command_ms: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[str] = field(default_factory=Counter)
    mode: str = "wait_for"
    censored: int = 0  # still unanswered at the end: counted at their latency so far

    def summary(self) -> dict[str, Any]:
        vis, cmd = sorted(self.visible_ms), sorted(self.command_ms)
        return {
            "target_rate": self.rate_target,
            "achieved_rate": round(self.sent / self.duration_s, 1) if self.duration_s else 0.0,
            "visible": len(vis) - self.censored,
            "unanswered_counted_as_lower_bound": self.censored,
            "p50_ms": round(percentile(vis, 50), 2),
            "p95_ms": round(percentile(vis, 95), 2),
            "p99_ms": round(percentile(vis, 99), 2),
            "command_p50_ms": round(percentile(cmd, 50), 2),
            "command_p99_ms": round(percentile(cmd, 99), 2),
            "statuses": dict(self.statuses),
            "mode": self.mode,
        }


async def e2e_run(
    cmd_port: int,
    query_port: int,
    accounts: list[str],
    *,
    rate: float,
    duration_s: float,
    workers: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    drain_s: float = 30.0,
) -> E2eResult:
    rnd = random.Random(seed)
    n = int(rate * duration_s)
    result = E2eResult(rate)
    queue: asyncio.Queue[tuple[float, str, bytes] | None] = asyncio.Queue()
    inflight: set[float] = set()
    perf = time.perf_counter

    async def worker() -> None:
        cmd, qry = Client(cmd_port), Client(query_port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, acc, raw = item
                inflight.add(due)
                try:
                    await one(cmd, qry, due, acc, raw)
                except (OSError, TimeoutError, ValueError) as exc:
                    result.statuses[f"error:{type(exc).__name__}"] += 1
                finally:
                    inflight.discard(due)
        finally:
            cmd.close()
            qry.close()

    async def one(cmd: Client, qry: Client, due: float, acc: str, raw: bytes) -> None:
        status, body = await cmd.request(raw)
        result.command_ms.append((perf() - due) * 1000)
        result.statuses[f"command:{status}"] += 1
        if status != 200:
            return
        doc = orjson.loads(body)
        version, position = doc.get("version"), doc.get("position")
        path = f"/accounts/{acc}"
        if result.mode == "wait_for" and position:
            status, body = await qry.request(
                build_request("GET", f"{path}?wait_for={quote(position)}", query_port)
            )
            if status == 200 and _version(body) >= version:
                result.visible_ms.append((perf() - due) * 1000)
                result.statuses["query:200"] += 1
                return
            if status in (400, 422):
                result.mode = "polling"  # the query API does not take wait_for
            result.statuses[f"query:{status}"] += 1
        # Poll until the read model shows this version (or give up after 10 s).
        get = build_request("GET", path, query_port)
        give_up = perf() + 10.0
        while perf() < give_up:
            status, body = await qry.request(get)
            if status == 200 and _version(body) >= version:
                result.visible_ms.append((perf() - due) * 1000)
                result.statuses["query:200 (polled)"] += 1
                return
            await asyncio.sleep(0.002)
        result.statuses["query:not visible in 10s"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    start = perf() + 0.05
    for i in range(n):
        due = start + i / rate
        delay = due - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        acc = rnd.choice(accounts)
        queue.put_nowait((due, acc, command_request(cmd_port, acc, "Deposit", {"amount": 1})))
        result.sent += 1
        if progress is not None and i % 50 == 0:
            progress(i)
    result.duration_s = perf() - start
    for _ in tasks:
        queue.put_nowait(None)
    # An overloaded service may trail far behind the schedule: stop waiting after
    # `drain_s` and count what never answered, so the run's length stays bounded.
    _, late = await asyncio.wait(tasks, timeout=drain_s)
    now = perf()
    # Still waiting: in flight, or never taken from the queue. Their latency is
    # at least `now - due`; counting that lower bound keeps the tail honest.
    waiting = list(inflight)
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            waiting.append(item[0])
    for t in late:
        t.cancel()
    if late:
        # Bounded: a task that does not stop at once must not hold the run.
        await asyncio.wait(late, timeout=5)
    if waiting:
        result.statuses[f"unanswered {drain_s:.0f}s after the last send"] = len(waiting)
        result.visible_ms.extend((now - due) * 1000 for due in waiting)
        result.censored = len(waiting)
    return result


def _version(body: bytes) -> int:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return -1
    v = doc.get("version") if isinstance(doc, dict) else None
    return int(v) if isinstance(v, int) else -1


ACCOUNT_PATH = "/accounts/{id}"  # the bank's own route
VIEW_PATH = "/views/accounts/{id}"  # the generic view of the same document
# A filtered page: 50 open accounts by the projection's declared `status` filter.
PAGE_PATH = "/views/accounts?status=open&limit=50"


async def query_run(
    port: int,
    accounts: list[str],
    *,
    duration_s: float,
    warmup_s: float,
    seed: int,
    progress: Callable[[int], None] | None = None,
    server_pid: int | None = None,
    path: str = ACCOUNT_PATH,
    concurrency: int = 64,
) -> LoadResult:
    """GETs of random accounts at `path` (`{id}` replaced), from `concurrency` connections."""
    rnd = random.Random(seed)
    requests = [build_request("GET", path.format(id=rnd.choice(accounts)), port) for _ in range(20_000)]
    return await closed_loop(
        port,
        requests,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        on_progress=progress,
        server_pid=server_pid,
    )


async def projector_for(env: BenchEnv, prefix: str, write_url: str, read_url: str) -> Child:
    return env.eventfold("projector", ["serve", "projector"], env.service_env(prefix, write_url, read_url))
