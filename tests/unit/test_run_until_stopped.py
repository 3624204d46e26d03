"""A stop always returns: tasks ending on `stop` end by themselves; one stuck is cancelled after the grace."""

from __future__ import annotations

import asyncio

import pytest

from eventfold.tasks import run_until_stopped

DEADLINE_S = 5.0


async def test_tasks_that_end_on_stop_end_by_themselves() -> None:
    stop = asyncio.Event()
    finished: list[str] = []

    async def worker(name: str) -> None:
        await stop.wait()
        finished.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
    running = asyncio.create_task(run_until_stopped(tasks, stop, grace_s=DEADLINE_S))
    await asyncio.sleep(0)
    assert not running.done()
    stop.set()
    await asyncio.wait_for(running, DEADLINE_S)
    assert sorted(finished) == ["a", "b"]
    assert not any(t.cancelled() for t in tasks)


async def test_a_task_stuck_past_the_grace_is_cancelled_and_cleans_up() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()  # a broker that never answers a group join
    cleaned: list[str] = []

    async def stuck() -> None:
        try:
            await never.wait()
        finally:
            cleaned.append("stuck")

    async def polite() -> None:
        await stop.wait()

    tasks = [asyncio.create_task(stuck(), name="stuck"), asyncio.create_task(polite(), name="polite")]
    stop.set()
    await asyncio.wait_for(run_until_stopped(tasks, stop, grace_s=0.05), DEADLINE_S)
    assert cleaned == ["stuck"]
    assert tasks[0].cancelled() and not tasks[1].cancelled()


async def test_an_error_before_stop_is_raised() -> None:
    stop = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(run_until_stopped([asyncio.create_task(fails())], stop, 1.0), DEADLINE_S)


async def test_cancelling_the_runner_cancels_its_tasks() -> None:
    stop = asyncio.Event()
    inner = asyncio.create_task(asyncio.Event().wait())
    running = asyncio.create_task(run_until_stopped([inner], stop, grace_s=DEADLINE_S))
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.wait({inner}, timeout=DEADLINE_S)
    assert inner.cancelled()
