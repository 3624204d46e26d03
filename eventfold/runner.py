"""Running services under uvicorn, alone or several in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from eventfold import heap

T = TypeVar("T")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller.

    Before it waits for open connections to finish, it calls the app's
    `state.on_draining` hooks: a stream that lasts as long as its client wants
    (a live subscription) is ended there, with a word to the client, instead
    of being cut off at the graceful-shutdown timeout.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.fastapi_app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: Any = None) -> None:
        for hook in getattr(self.fastapi_app.state, "on_draining", []):
            hook()
        await super().shutdown(sockets)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running service.

    Almost everything a batch or request allocates is freed by reference
    counting; the collector only finds ~1 cycle in 100 events. With the
    default thresholds (700, 10, 10) it still walked every live object, read-
    ahead batches included, about every 8,000 events: a third of a replay's
    CPU (`bench/README.md`). Start-up objects (modules, functions,
    models) are frozen out of the walk, and young collections are rarer, so
    most objects die before one sees them.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run_fast(main: Coroutine[Any, Any, T], *, heap_trim_interval_s: float = 0.0) -> T:
    """Run a service's main coroutine on uvloop when it is installed (uvicorn[standard]).

    With `heap_trim_interval_s`, the C heap's free memory is given back to
    the system that often while it runs (`eventfold.heap`).
    """
    tune_gc()
    wrapped = _trimming_heap(main, heap_trim_interval_s)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(wrapped)
    return uvloop.run(wrapped)


async def _trimming_heap(main: Coroutine[Any, Any, T], interval_s: float) -> T:
    trimming = asyncio.create_task(heap.trim_every(interval_s), name="heap-trim")
    try:
        return await main
    finally:
        trimming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimming


def http_server(app: FastAPI, host: str, port: int) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return _Server(config, app)


# Ctrl-C, and a service manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)


async def stoppable(work: Coroutine[Any, Any, T], what: str, undone: str) -> T:
    """Await `work`, cancelled by SIGINT or SIGTERM; a stop becomes a RuntimeError.

    The handlers replace whatever the process inherited, so a replay started
    in the background (SIGINT ignored) or stopped by a service manager
    (SIGTERM) is undone as a Ctrl-C undoes it, rather than running on or
    dying mid-write. `work` must undo itself when cancelled; the error says
    `what` was stopped by which signal and `undone`, the CLI's one line.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    caught: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        if not caught:
            caught.append(sig)
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if not caught:
            raise
        raise RuntimeError(f"{what} stopped by {caught[0].name}; {undone}") from None
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def run_servers(servers: list[_Server], stop: asyncio.Event) -> None:
    """Serve until `stop` is set or a server exits, then shut all down."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    stopper.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r
    for s in servers:
        if not s.started and not stop.is_set():
            raise RuntimeError("a server failed to start (is its port free?)")
