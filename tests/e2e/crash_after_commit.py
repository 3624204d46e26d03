"""A command API that dies (SIGKILL) at its first attempt to publish.

It crashes at the worst moment of the dual write: the command's transaction
has committed, and Kafka has not yet been asked for anything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiokafka import AIOKafkaProducer

from command_api.bootstrap import create_app
from eventfold.runner import http_server, install_stop_signals, run_servers
from eventfold.settings import Settings
from examples.bank import app as bank


async def _die(*_: object, **__: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(port: int) -> None:
    AIOKafkaProducer.send_batch = _die  # type: ignore[method-assign]
    stop = asyncio.Event()
    install_stop_signals(stop)
    await run_servers([http_server(create_app(Settings(), bank.write_side()), "127.0.0.1", port)], stop)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
