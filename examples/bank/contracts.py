"""Contracts of the `account` stream type. Amounts are integer minor units.

History: `Deposited` and `Withdrawn` gained `reference` in schema version 2;
records of version 1 are upcast with an empty reference.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from schemas.base import Command, Event
from schemas.registry import declare_stream

Amount = Field(gt=0, le=10**15)
Reference = Field(default="", max_length=200)


class OpenAccount(Command):
    owner: str = Field(min_length=1, max_length=200)


class Deposit(Command):
    amount: int = Amount
    reference: str = Reference


class Withdraw(Command):
    amount: int = Amount
    reference: str = Reference


class CloseAccount(Command):
    pass


class AccountOpened(Event):
    # Bounded like the command (and the read column): a record in Kafka with a
    # larger owner is poison and is dead-lettered, never a failing write.
    owner: str = Field(max_length=200)


class Deposited(Event):
    schema_version: ClassVar[int] = 2
    amount: int
    reference: str


class Withdrawn(Event):
    schema_version: ClassVar[int] = 2
    amount: int
    reference: str


def _add_reference(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: money movements before references had none."""
    return {**data, "reference": ""}


class AccountClosed(Event):
    pass


ACCOUNT = declare_stream(
    "account",
    commands=[OpenAccount, Deposit, Withdraw, CloseAccount],
    events=[AccountOpened, Deposited, Withdrawn, AccountClosed],
    upcasters={("Deposited", 1): _add_reference, ("Withdrawn", 1): _add_reference},
)
