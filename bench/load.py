"""A lean HTTP/1.1 load generator: raw asyncio keep-alive connections.

The load generator shares the machine's cores with the server it measures, so
it must cost as little CPU as possible: requests are pre-built bytes, each
connection is an `asyncio.Protocol` that parses only the status line and
`Content-Length` (chunked bodies are understood, nothing else is), and
latencies go into a flat `array`.

Two shapes of load:
- `closed_loop`: N connections, each sends its next request when the previous
  answer arrives (requests/s at concurrency N).
- `Client` for open-loop use (the e2e phase), where the caller paces requests
  and measures from the scheduled start, so a slow server cannot hide its
  queueing delay (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.env import cpu_by_program, cpu_delta_us, cpu_seconds


class HttpError(ConnectionError):
    pass


# Sent with every request built here: the harness puts its API key in it.
default_headers: dict[str, str] = {}


def build_request(
    method: str,
    path: str,
    port: int,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """One HTTP/1.1 keep-alive request, as bytes ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for k, v in {**default_headers, **(headers or {})}.items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = _parse(self.buf)
        if parsed is not None:
            status, body, used = parsed
            del self.buf[:used]
            self.waiter.set_result((status, body))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.closed or self.transport is None:
            raise HttpError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


def _parse(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete response, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    start = end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else None])
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start : start + length]), start + length
    if b"transfer-encoding: chunked" in head:
        return _parse_chunked(buf, status, start)
    return status, b"", start  # no body (204, 304) or one we do not understand


def _parse_chunked(buf: bytearray, status: int, pos: int) -> tuple[int, bytes, int] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2
        if size == 0:
            return status, bytes(body), pos


class Client:
    """A keep-alive connection that reconnects after the server closes it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._conn: _Conn | None = None

    async def request(self, raw: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
        conn = self._conn
        if conn is None or conn.closed:
            loop = asyncio.get_running_loop()
            made = await asyncio.wait_for(loop.create_connection(_Conn, self.host, self.port), timeout_s)
            conn = self._conn = made[1]
        try:
            return await asyncio.wait_for(conn.request(raw), timeout_s)
        except BaseException:
            self.close()  # a half-read response would poison the next one
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class LoadResult:
    duration_s: float
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # CPU (user + system) the server process used while the numbers counted, when its pid was given.
    server_cpu_s: float | None = None
    # The whole machine's CPU over the same window, µs per request by program
    # (`python`, `postgres`, `java`), when the server's pid was given.
    machine_us_by_program: dict[str, float] | None = None

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.count / self.duration_s if self.duration_s > 0 else 0.0

    def ok_rps(self, ok: Callable[[int], bool] = lambda s: 200 <= s < 300) -> float:
        n = sum(c for s, c in self.statuses.items() if ok(s))
        return n / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)

    def cpu_us_per_request(self) -> float | None:
        """The server's CPU per answered request: compares servers whatever else loads the machine."""
        if self.server_cpu_s is None or not self.count:
            return None
        return self.server_cpu_s * 1e6 / self.count

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": len(lat),
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(percentile(lat, 50), 2),
            "p95_ms": round(percentile(lat, 95), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "server_cpu_us_per_request": _round(self.cpu_us_per_request()),
            "machine_cpu_us_per_request_by_program": self.machine_us_by_program,
        }


def _round(v: float | None) -> float | None:
    return round(v, 1) if v is not None else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int = 64,
    duration_s: float | None = None,
    total: int | None = None,
    warmup_s: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    host: str = "127.0.0.1",
    server_pid: int | None = None,
    on_response: Callable[[int, bytes], None] | None = None,
) -> LoadResult:
    """Send `requests` in order (cycling) from `concurrency` connections.

    Stops after `duration_s` (measured after `warmup_s`) or after `total`
    requests, whichever is given. Each request is sent exactly once per cycle,
    so a list of distinct commands is executed in order across connections.
    With `server_pid`, the result has the CPU that process used over the
    counted part (`server_cpu_s`). `on_response` sees the status and body of
    each counted answer (a batch's answer holds outcomes of its own).
    """
    if duration_s is None and total is None:
        raise ValueError("give duration_s or total")
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(concurrency):
        _, conn = await loop.create_connection(_Conn, host, port)
        conns.append(conn)
    counter = itertools.count()
    n_req = len(requests)
    result = LoadResult(0.0)
    lat, statuses, errors = result.latencies_ms, result.statuses, result.errors
    perf = time.perf_counter
    measuring = warmup_s <= 0
    cpu_from = _cpu(server_pid) if measuring else None
    programs_from = cpu_by_program() if measuring and server_pid is not None else None
    start = perf()
    stop_at = float("inf")
    if duration_s is not None:
        stop_at = start + warmup_s + duration_s
    limit = total if total is not None else None

    async def worker(conn: _Conn) -> None:
        nonlocal measuring
        while True:
            i = next(counter)
            if limit is not None and i >= limit:
                return
            now = perf()
            if now >= stop_at:
                return
            if conn.closed:
                try:
                    _, conn = await loop.create_connection(_Conn, host, port)
                except OSError as exc:
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
            t0 = perf()
            try:
                status, body = await conn.request(requests[i % n_req])
            except (HttpError, OSError) as exc:
                errors[type(exc).__name__] += 1
                continue
            if measuring:
                lat.append((perf() - t0) * 1000.0)
                statuses[status] += 1
                if on_response is not None:
                    on_response(status, body)

    async def warmup_switch() -> None:
        nonlocal measuring, start, cpu_from, programs_from
        await asyncio.sleep(warmup_s)
        # The numbers count from here; requests in flight now are counted too.
        start = perf()
        cpu_from = _cpu(server_pid)
        programs_from = cpu_by_program() if server_pid is not None else None
        measuring = True

    async def progress() -> None:
        while True:
            await asyncio.sleep(0.25)
            if on_progress is not None:
                on_progress(len(lat))

    side = [asyncio.create_task(progress())]
    if not measuring:
        side.append(asyncio.create_task(warmup_switch()))
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        end = perf()
        cpu_to = _cpu(server_pid)
        programs_to = cpu_by_program() if programs_from is not None else None
        for t in side:
            t.cancel()
        for c in conns:
            c.close()
    result.duration_s = end - start
    if cpu_from is not None and cpu_to is not None:
        result.server_cpu_s = cpu_to - cpu_from
    if programs_from is not None and programs_to is not None and result.count:
        result.machine_us_by_program = cpu_delta_us(programs_from, programs_to, result.count)
    if on_progress is not None:
        on_progress(len(lat))
    return result


def _cpu(pid: int | None) -> float | None:
    return cpu_seconds(pid) if pid is not None else None
