"""The SMTP server the reactors mail to: a real one (aiosmtpd), counting Message-IDs.

It runs in the harness's process (aiosmtpd's own thread and loop) on a fixed
port, so it can go away for a few seconds (an outage the reactors must retry
through) and come back where the services expect it.
"""

from __future__ import annotations

import threading
from collections import Counter
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller

from eventfold.broker import free_port


class Inbox:
    """Every mail received, counted by its Message-ID's local part (the reactor's key)."""

    def __init__(self) -> None:
        self._ids: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.original_content or envelope.content)
        with self._lock:
            self._ids[str(mail["Message-ID"]).strip().strip("<>").partition("@")[0]] += 1
        return "250 OK"

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._ids)


class MailServer:
    def __init__(self) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None
