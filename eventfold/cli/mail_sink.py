"""A local SMTP server for `eventfold dev`: every mail it receives becomes a file.

Reactors that send mail (the bank's welcome email) need a server; in
development this one accepts everything on 127.0.0.1 and writes each mail,
as received, to `<data_dir>/mail/<time>-<n>.eml`.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _ToFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self.counter):04d}.eml"
        (self.folder / name).write_bytes(envelope.original_content or envelope.content)
        return "250 OK"


class MailSink:
    """aiosmtpd's Controller (its own thread and loop) writing mails into `folder`."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.controller = Controller(_ToFiles(folder), hostname="127.0.0.1", port=port)

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
