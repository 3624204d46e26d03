"""Contracts of the `account` stream type. Amounts are integer minor units."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Command, Event
from schemas.registry import declare_stream

Amount = Field(gt=0, le=10**15)


class OpenAccount(Command):
    owner: str = Field(min_length=1, max_length=200)


class Deposit(Command):
    amount: int = Amount


class Withdraw(Command):
    amount: int = Amount


class CloseAccount(Command):
    pass


class AccountOpened(Event):
    owner: str


class Deposited(Event):
    amount: int


class Withdrawn(Event):
    amount: int


class AccountClosed(Event):
    pass


ACCOUNT = declare_stream(
    "account",
    commands=[OpenAccount, Deposit, Withdraw, CloseAccount],
    events=[AccountOpened, Deposited, Withdrawn, AccountClosed],
)
