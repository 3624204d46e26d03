"""Live subscribers: many Server-Sent Events streams on one query API process.

N subscribers each follow one account (`GET /views/accounts/{id}/live`),
spread evenly over the accounts, on raw asyncio connections that parse only
what they need (the response head, HTTP/1.1 chunks, the `event:` and `data:`
lines). Once every one has its `state`, the query API's resident memory per
idle subscriber is read; then deposits to those accounts are sent open loop at
a steady rate, and each change's latency is from the command's 200 (the
command is durable and published) to each subscriber of its account
receiving the document at that version or a later one (the feed sends a
document's state as it is when read, so two quick changes may arrive as
one). The query API's CPU time over the load, divided by the changes and by
the change events it sent, is its cost per change.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.command import command_request
from bench.env import cpu_seconds, peak_rss_mb
from bench.load import Client, build_request, percentile


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Refused(ConnectionError):
    """The query API answered the subscription with an error status (503: not ready yet)."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"status {status}: {head[:300]!r}")
        self.status = status
        lower = head.lower()
        i = lower.find(b"\r\nretry-after: ")
        self.retry_after_s = float(lower[i + 16 : lower.find(b"\r\n", i + 2)]) if i >= 0 else 1.0


class _Stream(asyncio.Protocol):
    """One SSE subscription: records (version, receipt time) of every change it gets."""

    def __init__(self, account: str, arrived: asyncio.Event) -> None:
        self.account = account
        self.versions = array("q")
        self.times = array("d")
        self.arrived = arrived
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.chunks = bytearray()
        self.events = bytearray()
        self.in_body = False
        self.status = 0
        self.state = asyncio.get_running_loop().create_future()
        self.other_events: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.state.done():
            self.state.set_exception(ConnectionError(f"stream closed before its state: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            if self.status != 200:
                self.state.set_exception(_Refused(self.status, bytes(self.head)))
                return
            self.in_body = True
            data = bytes(self.head[end + 4 :])
            self.head.clear()
        self.chunks += data
        self._dechunk()
        self._events(now)

    def _dechunk(self) -> None:
        buf, pos = self.chunks, 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                break
            self.events += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        del buf[:pos]

    def _events(self, now: float) -> None:
        while (end := self.events.find(b"\n\n")) >= 0:
            block = bytes(self.events[:end])
            del self.events[: end + 2]
            kind = b""
            data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    kind = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if kind == b"change" and data:
                doc = orjson.loads(data).get("document") or {}
                self.versions.append(int(doc.get("version", -1)))
                self.times.append(now)
                self.arrived.set()
            elif kind == b"state":
                if not self.state.done():
                    self.state.set_result(None)
            elif kind:
                self.other_events[kind.decode()] += 1

    @property
    def top(self) -> int:
        return self.versions[-1] if self.versions else -1

    def seen_at(self, version: int) -> float | None:
        """When this stream first had the document at `version` or later."""
        i = bisect.bisect_left(self.versions, version)
        return self.times[i] if i < len(self.versions) else None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class LiveResult:
    subscribers: int
    accounts: int
    rate_target: float
    connect_s: float = 0.0
    idle_kb_per_subscriber: float | None = None
    sent: int = 0
    acked: int = 0
    duration_s: float = 0.0
    delivered: int = 0
    expected: int = 0
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    cpu_s: float | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    other_events: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latency_ms)
        per_change = self.cpu_s * 1e6 / self.acked if self.cpu_s is not None and self.acked else None
        per_delivery = (
            self.cpu_s * 1e6 / self.delivered if self.cpu_s is not None and self.delivered else None
        )
        return {
            "subscribers": self.subscribers,
            "accounts": self.accounts,
            "target_rate": self.rate_target,
            "achieved_rate": round(self.acked / self.duration_s, 1) if self.duration_s else 0.0,
            "connect_s": round(self.connect_s, 2),
            "idle_kb_per_subscriber": None
            if self.idle_kb_per_subscriber is None
            else round(self.idle_kb_per_subscriber, 1),
            "changes_acknowledged": self.acked,
            "changes_times_subscribers": self.expected,
            "change_events_sent": self.delivered,
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0.0,
            "cpu_us_per_change": None if per_change is None else round(per_change, 1),
            "cpu_us_per_delivery": None if per_delivery is None else round(per_delivery, 1),
            "statuses": dict(self.statuses),
            "other_events": dict(self.other_events),
        }


async def live_run(
    cmd_port: int,
    query_port: int,
    query_pid: int,
    accounts: list[str],
    *,
    subscribers: int,
    rate: float,
    duration_s: float,
    max_accounts: int = 1000,
    seed: int = 0,
    drain_s: float = 10.0,
    progress: Callable[[int], None] | None = None,
) -> LiveResult:
    followed = accounts[: min(len(accounts), subscribers, max_accounts)]
    result = LiveResult(subscribers, len(followed), rate)
    arrived = asyncio.Event()
    streams: list[_Stream] = []
    loop = asyncio.get_running_loop()
    rss0 = peak_rss_mb(query_pid, "VmRSS")
    t0 = time.perf_counter()
    opening = asyncio.Semaphore(128)

    async def subscribe(i: int) -> None:
        account = followed[i % len(followed)]
        request = build_request(
            "GET", f"/views/accounts/{account}/live", query_port, headers={"Accept": "text/event-stream"}
        )
        give_up = time.perf_counter() + 60
        async with opening:
            while True:
                _, stream = await loop.create_connection(
                    lambda: _Stream(account, arrived), "127.0.0.1", query_port
                )
                assert stream.transport is not None
                stream.transport.write(request)
                try:
                    await asyncio.wait_for(asyncio.shield(stream.state), 60)
                    break
                except _Refused as exc:
                    stream.close()
                    if exc.status != 503 or time.perf_counter() > give_up:
                        raise
                    result.statuses["subscribe:503, retried"] += 1
                    await asyncio.sleep(exc.retry_after_s)  # as the answer's Retry-After asks
            streams.append(stream)
        if progress is not None and len(streams) % 100 == 0:
            progress(len(streams))

    try:
        await asyncio.gather(*(subscribe(i) for i in range(subscribers)))
        result.connect_s = time.perf_counter() - t0
        rss1 = peak_rss_mb(query_pid, "VmRSS")
        if rss0 is not None and rss1 is not None:
            result.idle_kb_per_subscriber = (rss1 - rss0) * 1024 / subscribers
        by_account: dict[str, list[_Stream]] = {}
        for stream in streams:
            by_account.setdefault(stream.account, []).append(stream)
        acked: dict[tuple[str, int], float] = {}
        cpu0 = cpu_seconds(query_pid)
        base = sum(len(st.versions) for st in streams)
        await _send(cmd_port, followed, rate, duration_s, seed, result, acked)
        top: dict[str, int] = {}
        for acc, version in acked:
            top[acc] = max(version, top.get(acc, -1))

        def complete() -> bool:
            return all(st.top >= v for acc, v in top.items() for st in by_account[acc])

        # Wait (bounded) until every subscriber has the last acknowledged version of its account.
        deadline = time.perf_counter() + drain_s
        while not complete() and (left := deadline - time.perf_counter()) > 0:
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)
        cpu1 = cpu_seconds(query_pid)
        if cpu0 is not None and cpu1 is not None:
            result.cpu_s = cpu1 - cpu0
        result.delivered = sum(len(st.versions) for st in streams) - base
        end = time.perf_counter()
        for (acc, version), sent_at in acked.items():
            for st in by_account[acc]:
                result.expected += 1
                seen = st.seen_at(version)
                if seen is None:
                    # Never arrived: counted at its wait so far (a lower bound), so the tail stays honest.
                    result.statuses[f"not seen within {drain_s:g}s"] += 1
                    seen = end
                result.latency_ms.append(max(0.0, seen - sent_at) * 1000)
        for s in streams:
            result.other_events.update(s.other_events)
    finally:
        for s in streams:
            s.close()
    return result


async def _send(
    port: int,
    accounts: list[str],
    rate: float,
    duration_s: float,
    seed: int,
    result: LiveResult,
    acked: dict[tuple[str, int], float],
) -> None:
    """Deposits at `rate`, open loop; records when each one's 200 arrived, by (account, version)."""
    rnd = random.Random(seed)
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def worker() -> None:
        client = Client(port)
        try:
            while (account := await queue.get()) is not None:
                try:
                    status, body = await client.request(
                        command_request(port, account, "Deposit", {"amount": 1})
                    )
                except (OSError, TimeoutError, ValueError) as exc:
                    result.statuses[f"error:{type(exc).__name__}"] += 1
                    continue
                result.statuses[f"command:{status}"] += 1
                if status == 200:
                    acked[(account, int(orjson.loads(body)["version"]))] = time.perf_counter()
                    result.acked += 1
        finally:
            client.close()

    workers = [asyncio.create_task(worker()) for _ in range(64)]
    start = time.perf_counter() + 0.05
    n = int(rate * duration_s)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(rnd.choice(accounts))
        result.sent += 1
    result.duration_s = time.perf_counter() - start
    for _ in workers:
        queue.put_nowait(None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*workers), 30)
