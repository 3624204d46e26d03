"""Diagnosis: the command API with timers on its stages, to see where a command waits.

`python -m bench.stages` serves the command API (settings from `EVENTFOLD_*`,
port from `--port`) with wrappers around the service's stages, and writes a
JSON summary to `--out` when it stops (SIGTERM/SIGINT). Nothing in eventfold
is changed: the wrappers are installed on the classes at start.

Stages of one command, in order:
- `queue`: from `CommandService.execute` until the commit loop takes its batch
- `commit`: the batch's write-store transaction (`CommandService._commit`)
- `after_commit`: from the commit's end until `execute` returns (the Kafka ack)
- `execute`: all of the above

`--patch` tries a change without editing eventfold, to measure it before
proposing it: `bulk-router` (the publisher routes every queued record at
once, without `wait_for` per record; eventfold does so itself since 4f3e974),
`async-deps` (the `get_side` dependency as `async def`, so FastAPI does not
run it in a worker thread), `uvloop` (serve on uvloop instead of the stdlib
loop that `asyncio.run` gives).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request  # resolves the patched dependency's annotation

PATCHES = ("bulk-router", "async-deps", "uvloop")
_samples: dict[str, list[float]] = defaultdict(list)
_batch_sizes: list[int] = []


def _install() -> None:
    from command_api.service import CommandService

    started: dict[int, float] = {}
    committed: dict[int, float] = {}
    orig_execute = CommandService.execute
    orig_commit = CommandService._commit

    async def execute(self: Any, cmd: Any) -> Any:
        t0 = time.perf_counter()
        started[id(cmd)] = t0
        try:
            return await orig_execute(self, cmd)
        finally:
            t1 = time.perf_counter()
            _samples["execute"].append(t1 - t0)
            done = committed.pop(id(cmd), None)
            if done is not None:
                _samples["after_commit"].append(t1 - done)
            started.pop(id(cmd), None)

    async def commit(self: Any, batch: list[Any]) -> None:
        t0 = time.perf_counter()
        for cmd in batch:
            if id(cmd) in started:
                _samples["queue"].append(t0 - started[id(cmd)])
        try:
            await orig_commit(self, batch)
        finally:
            t1 = time.perf_counter()
            _samples["commit"].append(t1 - t0)
            _batch_sizes.append(len(batch))
            for cmd in batch:
                committed[id(cmd)] = t1

    CommandService.execute = execute  # type: ignore[method-assign]
    CommandService._commit = commit  # type: ignore[method-assign]


def _patch_bulk_router() -> None:
    import inspect

    from command_api import publisher as pub
    from eventfold.kafka import partition_for

    if "_route_q" not in inspect.getsource(pub.Publisher):
        # The publisher routes whole batches since 2026-11-23 (4f3e974); nothing to try.
        print("bench.stages: --patch bulk-router skipped: the publisher has no _route_q")
        return

    async def _route(self: Any) -> None:
        backoff = 0.05
        while True:
            items = [await self._route_q.get()]
            while not self._route_q.empty():
                items.append(self._route_q.get_nowait())
            while True:
                try:
                    if not self._started:
                        await asyncio.wait_for(self._ensure_started(), self.publish_timeout_s)
                    for topic in {rec.topic for rec, _ in items} - set(self._partitions):
                        await asyncio.wait_for(self._partition_count(topic), self.publish_timeout_s)
                    break
                except Exception:
                    self.failures += 1
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            backoff = 0.05
            woken = []
            for rec, ticket in items:
                n = self._partitions[rec.topic]
                lane = self._lane(rec.topic, partition_for(rec.key, n))
                lane.pending.append((rec, ticket))
                woken.append(lane)
            for lane in woken:
                lane.wake.set()

    pub.Publisher._route = _route  # type: ignore[method-assign]


def _patch_async_deps() -> None:
    from command_api import deps

    async def get_side(request: Request) -> Any:
        return request.app.state.side

    # Depends is frozen; routes read `.dependency` when they are declared (after this).
    object.__setattr__(deps.SideDep.__metadata__[0], "dependency", get_side)  # type: ignore[attr-defined]


def summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in _samples.items():
        v = sorted(values)
        if v:
            out[name] = {
                "n": len(v),
                "mean_ms": round(1000 * sum(v) / len(v), 2),
                "p50_ms": round(1000 * v[len(v) // 2], 2),
                "p99_ms": round(1000 * v[min(len(v) - 1, int(len(v) * 0.99))], 2),
            }
    if _batch_sizes:
        out["batch_size_mean"] = round(sum(_batch_sizes) / len(_batch_sizes), 2)
        out["batches"] = len(_batch_sizes)
    return out


def reset() -> None:
    _samples.clear()
    _batch_sizes.clear()


async def _serve(port: int, out: Path, patches: set[str]) -> None:
    if "bulk-router" in patches:
        _patch_bulk_router()
    if "async-deps" in patches:
        _patch_async_deps()
    from command_api.bootstrap import create_app
    from eventfold.runner import http_server, install_stop_signals, run_servers
    from eventfold.settings import get_settings
    from examples.bank import app as bank

    _install()
    settings = get_settings()
    stop = asyncio.Event()
    install_stop_signals(stop)
    app = create_app(settings, bank.write_side())

    @app.post("/_bench/stages/reset", include_in_schema=False)
    async def reset_stages() -> dict[str, str]:
        """Forget the timings so far."""
        reset()
        return {"status": "reset"}

    @app.get("/_bench/stages", include_in_schema=False)
    async def read_stages() -> dict[str, Any]:
        """The timings so far."""
        return summary()

    try:
        await run_servers([http_server(app, "127.0.0.1", port)], stop)
    finally:
        out.write_bytes(orjson.dumps(summary(), option=orjson.OPT_INDENT_2))  # noqa: ASYNC240


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stages")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, default=Path("stages.json"))
    parser.add_argument("--patch", action="append", default=[], choices=PATCHES)
    args = parser.parse_args()
    patches = set(args.patch)
    factory = None
    if "uvloop" in patches:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(args.port, args.out, patches))


if __name__ == "__main__":
    main()
