"""The bank's welcome email: a reactor that mails every new account's owner over SMTP.

The SMTP server is configured by the environment (`EVENTFOLD_SMTP_HOST`,
`EVENTFOLD_SMTP_PORT`, `EVENTFOLD_SMTP_FROM`); `eventfold dev` starts a local
sink and sets them when they are unset. The reactor's idempotency key is the
mail's Message-ID, so a mail sent again after a crash is recognisably the
same mail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message

import aiosmtplib
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventfold import EnvelopeMeta, Event, Reactor
from examples.bank.contracts import ACCOUNT, AccountOpened


class MailSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTFOLD_SMTP_", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = Field(default="welcome@bank.example", validation_alias="EVENTFOLD_SMTP_FROM")
    timeout_s: float = 10.0


def recipient(owner: str) -> str:
    """The owner when it is an address; else a mailbox named after the owner."""
    if "@" in owner:
        return owner
    local = re.sub(r"[^a-z0-9._-]+", "-", owner.lower()).strip("-") or "owner"
    return f"{local}@customers.bank.example"


def welcome_message(sender: str, owner: str, account: str, key: str) -> Message:
    """The mail, built with the plain `Message` API.

    `EmailMessage` makes a new class for every header it sets (the standard
    library's header registry), garbage only the cyclic collector frees; at one
    mail per new account that kept a long-running reactor's memory growing.
    """
    msg = Message()
    msg["From"] = sender
    msg["To"] = recipient(owner)
    msg["Subject"] = "Welcome to the bank"
    msg["Message-ID"] = f"<{key}@{sender.rpartition('@')[2] or 'bank.example'}>"
    msg.set_payload(f"Dear {owner},\n\nyour account {account} is open.\n", "utf-8")
    return msg


def welcome_reactor(mail: Callable[[], MailSettings] = MailSettings) -> Reactor:
    """The reactor, reading its SMTP settings when it sends (dev sets them after loading the app)."""

    async def send_welcome(meta: EnvelopeMeta, event: Event, key: str) -> None:
        assert isinstance(event, AccountOpened)
        cfg = mail()
        await aiosmtplib.send(
            welcome_message(cfg.sender, event.owner, meta.stream_id, key),
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout_s,
        )

    # Ten attempts, 0.5 s doubling up to 30 s between them (with jitter): a mail
    # server down for a minute or more, restarting say, delays the mail; only
    # longer than that is it dead-lettered for `eventfold dlq retry`.
    return Reactor(
        name="welcome_email",
        contract=ACCOUNT,
        handlers={"AccountOpened": send_welcome},
        max_attempts=10,
        max_backoff_s=30.0,
    )


WELCOME_EMAIL = welcome_reactor()
