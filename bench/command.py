"""Command API under load: opened accounts, then deposit/withdraw mixes.

The service runs as `eventfold serve command-api` in its own process, so the
load generator (this process) and the server do not share an event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import orjson

from bench.env import BenchEnv, Child
from bench.load import LoadResult, build_request, closed_loop

STREAM_TYPE = "account"


@dataclass
class CommandApi:
    child: Child
    port: int
    accounts: list[str] = field(default_factory=list)


def account_ids(n: int) -> list[str]:
    return [f"acct-{i:06d}" for i in range(n)]


def command_request(port: int, stream_id: str, command: str, data: dict[str, object]) -> bytes:
    body = orjson.dumps({"type": command, "data": data})
    return build_request("POST", f"/commands/{STREAM_TYPE}/{stream_id}", port, body)


def mix_requests(port: int, accounts: list[str], n: int, seed: int) -> list[bytes]:
    """`n` commands, half deposits and half withdrawals, over `accounts` at random."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        acc = rnd.choice(accounts)
        if rnd.random() < 0.5:
            out.append(command_request(port, acc, "Deposit", {"amount": rnd.randint(1, 100)}))
        else:
            out.append(command_request(port, acc, "Withdraw", {"amount": rnd.randint(1, 50)}))
    return out


async def start(env: BenchEnv, prefix: str, write_url: str, read_url: str) -> CommandApi:
    from bench.env import free_ports

    (port,) = free_ports(1)
    child = env.eventfold(
        "command-api",
        ["serve", "command-api", "--port", str(port)],
        env.service_env(prefix, write_url, read_url),
    )
    await env.wait_http(child, port, "/readyz", timeout_s=60)
    return CommandApi(child, port)


async def open_accounts(api: CommandApi, n: int, progress: object = None) -> dict[str, object]:
    """Open `n` accounts and deposit into each, so withdrawals mostly succeed."""
    ids = account_ids(n)
    opens = [command_request(api.port, i, "OpenAccount", {"owner": f"owner {i}"}) for i in ids]
    deposits = [command_request(api.port, i, "Deposit", {"amount": 1_000_000}) for i in ids]
    statuses: Counter[str] = Counter()
    for phase in (opens, deposits):
        res = await closed_loop(api.port, phase, concurrency=64, total=len(phase), on_progress=progress)  # type: ignore[arg-type]
        statuses.update({str(k): v for k, v in res.statuses.items()})
        statuses.update({f"error:{k}": v for k, v in res.errors.items()})
    api.accounts = ids
    return dict(statuses)


def status_counts(res: LoadResult) -> dict[str, int]:
    s = res.statuses
    return {
        "200": s.get(200, 0),
        "202": s.get(202, 0),
        "4xx": sum(v for k, v in s.items() if 400 <= k < 500),
        "5xx": sum(v for k, v in s.items() if k >= 500),
        "errors": sum(res.errors.values()),
    }


async def mix_run(
    api: CommandApi,
    accounts: list[str],
    *,
    duration_s: float,
    warmup_s: float,
    seed: int,
    progress: object = None,
    concurrency: int = 64,
) -> LoadResult:
    # Enough distinct commands that a fast server does not cycle through them.
    requests = mix_requests(api.port, accounts, 60_000, seed)
    return await closed_loop(
        api.port,
        requests,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        on_progress=progress,  # type: ignore[arg-type]
        server_pid=api.child.pid,
    )


BATCH_SIZE = 500
BATCH_CONCURRENCY = 4


@dataclass
class BatchRun:
    """A run of `POST /commands`: the load and the outcomes inside the answers."""

    load: LoadResult
    outcomes: Counter[int] = field(default_factory=Counter)

    def ok_commands_per_s(self) -> float:
        ok = sum(n for status, n in self.outcomes.items() if 200 <= status < 300)
        return ok / self.load.duration_s if self.load.duration_s > 0 else 0.0

    def cpu_us_per_command(self) -> float | None:
        n = sum(self.outcomes.values())
        return self.load.server_cpu_s * 1e6 / n if self.load.server_cpu_s is not None and n else None


def batch_requests(port: int, accounts: list[str], n: int, size: int, seed: int) -> list[bytes]:
    """`n` batches of `size` deposits, each to accounts picked at random."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        commands = [
            {
                "stream_type": STREAM_TYPE,
                "stream_id": acc,
                "type": "Deposit",
                "data": {"amount": rnd.randint(1, 100)},
            }
            for acc in rnd.sample(accounts, min(size, len(accounts)))
        ]
        out.append(build_request("POST", "/commands", port, orjson.dumps({"commands": commands})))
    return out


async def batch_run(
    api: CommandApi, *, size: int, duration_s: float, warmup_s: float, seed: int, progress: object = None
) -> BatchRun:
    requests = batch_requests(api.port, api.accounts, 200, size, seed)
    run = BatchRun(LoadResult(0.0))

    def count(status: int, body: bytes) -> None:
        if status == 200:
            run.outcomes.update(item["status"] for item in orjson.loads(body)["results"])

    run.load = await closed_loop(
        api.port,
        requests,
        concurrency=BATCH_CONCURRENCY,
        duration_s=duration_s,
        warmup_s=warmup_s,
        on_progress=progress,  # type: ignore[arg-type]
        server_pid=api.child.pid,
        on_response=count,
    )
    return run


STEADY_CONCURRENCY = 32


async def steady_run(api: CommandApi, *, duration_s: float, progress: object = None) -> LoadResult:
    """Deposits back to back from 32 clients over every account: one load from start to end."""
    requests = [command_request(api.port, acc, "Deposit", {"amount": 1}) for acc in api.accounts]
    return await closed_loop(
        api.port,
        requests,
        concurrency=STEADY_CONCURRENCY,
        duration_s=duration_s,
        on_progress=progress,  # type: ignore[arg-type]
    )


async def metrics(port: int) -> dict[str, float]:
    """Sums and counts of the service's Prometheus metrics, labels added up."""
    from bench.load import Client

    client = Client(port)
    try:
        status, body = await client.request(build_request("GET", "/metrics", port), timeout_s=5)
    finally:
        client.close()
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name.endswith(("_sum", "_count", "_total")):
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float], commands: int) -> dict[str, float]:
    """What the server says about a run: group-commit batches and its own latency."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    out: dict[str, float] = {}
    batches, batched = (
        d.get("eventfold_commit_batch_size_count", 0.0),
        d.get("eventfold_commit_batch_size_sum", 0.0),
    )
    if batches:
        out["commit_transactions"] = batches
        out["mean_commands_per_commit"] = round(batched / batches, 2)
    n, secs = d.get("eventfold_command_seconds_count", 0.0), d.get("eventfold_command_seconds_sum", 0.0)
    if n:
        out["server_mean_command_ms"] = round(1000 * secs / n, 2)
    if "eventfold_publish_failures_total" in d:
        out["publish_failures"] = d["eventfold_publish_failures_total"]
    out["client_commands"] = commands
    return out


async def profile(
    api: CommandApi, duration_s: int, progress: object = None, *, batches: bool = False
) -> dict[str, object]:
    """py-spy on the server during an unmeasured mix run (or batch run): a flame graph and the hot spots."""
    from bench.profile import Recording

    rec = Recording(api.child.pid, "command-api-batches" if batches else "command-api", duration_s)
    await asyncio.sleep(0.5)
    if batches:
        run = await batch_run(api, size=BATCH_SIZE, duration_s=duration_s + 1, warmup_s=0, seed=99)
        rate = run.ok_commands_per_s()
    else:
        res = await mix_run(
            api, api.accounts, duration_s=duration_s + 1, warmup_s=0, seed=99, progress=progress
        )
        rate = res.rps
    out = await rec.finish()
    out["commands_per_s_while_profiled"] = round(rate, 1)
    return out
