"""A projector that dies (SIGKILL) right after its first batch that changed something commits.

The rows, the offsets and the change feed's rows are in the read store; the
consumer group never heard of the batch, and no subscriber has been sent it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import projector.runtime as runtime
from eventfold.runner import install_stop_signals
from eventfold.settings import Settings
from examples.bank import app as bank

_apply = runtime.apply_batch


async def _apply_then_die(*args: Any, **kwargs: Any) -> Any:
    result = await _apply(*args, **kwargs)
    if result.allowed and result.folded is not None and result.folded.applied:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


async def main() -> None:
    runtime.apply_batch = _apply_then_die  # type: ignore[assignment]
    stop = asyncio.Event()
    install_stop_signals(stop)
    await runtime.run_projectors(Settings(), list(bank.projections), stop)


if __name__ == "__main__":
    del sys.argv[1:]  # the port the harness passes: this process serves none
    asyncio.run(main())
