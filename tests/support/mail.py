"""A real SMTP server for tests (aiosmtpd's Controller), keeping what it receives."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from eventfold.broker import free_port


class Inbox:
    """Mails received, in order; `hold` makes the server take a mail but not answer yet."""

    def __init__(self) -> None:
        self.mails: list[Message] = []
        self.lock = threading.Lock()
        self.held = threading.Event()
        self.held.set()  # set: answer at once

    def messages(self) -> list[Message]:
        with self.lock:
            return list(self.mails)

    def ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages()]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mails.append(message_from_bytes(envelope.original_content or envelope.content))
        await asyncio.to_thread(self.held.wait)  # the sender waits for the answer meanwhile
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, int(controller.port)
    finally:
        inbox.held.set()
        controller.stop()
