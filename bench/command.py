"""Command API under load: opened accounts, then deposit/withdraw mixes.

The service runs as `eventfold serve command-api` in its own process, so the
load generator (this process) and the server do not share an event loop.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.env import BenchEnv, Child
from bench.load import LoadResult, build_request, closed_loop
from bench.report import RESULTS

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
    api: CommandApi, accounts: list[str], *, duration_s: float, warmup_s: float, seed: int,
    progress: object = None,
) -> LoadResult:
    # Enough distinct commands that a fast server does not cycle through them.
    requests = mix_requests(api.port, accounts, 60_000, seed)
    return await closed_loop(
        api.port, requests, concurrency=64, duration_s=duration_s, warmup_s=warmup_s,
        on_progress=progress,  # type: ignore[arg-type]
    )


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


async def profile(api: CommandApi, duration_s: int, progress: object = None) -> dict[str, object]:
    """py-spy on the server during an unmeasured mix run: a flame graph and the hot spots."""
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    svg = RESULTS / "profile-command-api.svg"
    raw = RESULTS / "profile-command-api.txt"
    common = ["record", "--pid", str(api.child.pid), "--duration", str(duration_s), "--rate", "100"]
    procs = [
        subprocess.Popen([exe, *common, "-o", str(svg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        subprocess.Popen(
            [exe, *common, "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ),
    ]
    await asyncio.sleep(0.5)
    load = asyncio.create_task(
        mix_run(api, api.accounts, duration_s=duration_s + 1, warmup_s=0, seed=99, progress=progress)
    )
    codes = [await asyncio.to_thread(p.wait) for p in procs]
    res = await load
    out: dict[str, object] = {"flamegraph": str(svg.relative_to(RESULTS.parent.parent)), "rps_while_profiled": round(res.rps, 1)}
    if any(codes):
        errs = [p.stderr.read().decode(errors="replace")[-500:] for p in procs if p.stderr]
        out["error"] = f"py-spy exited {codes}: {errs}"
        return out
    from bench.profile import hot_spots

    out.update(hot_spots(raw))
    return out
