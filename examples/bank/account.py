"""The `account` aggregate: pure decide and evolve over integer minor units."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from eventfold.aggregate import Aggregate, Rejected, replace
from examples.bank.contracts import (
    ACCOUNT,
    AccountClosed,
    AccountOpened,
    CloseAccount,
    Deposit,
    Deposited,
    OpenAccount,
    Withdraw,
    Withdrawn,
)
from schemas.base import Command, Event


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Account(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status = Status.NEW
    owner: str | None = None
    balance: int = 0


def decide(state: Account, command: Command) -> Sequence[Event]:
    if isinstance(command, OpenAccount):
        if state.status is not Status.NEW:
            raise Rejected("account_exists", "this account has already been opened")
        return [AccountOpened(owner=command.owner)]
    if state.status is Status.NEW:
        raise Rejected("account_not_open", "this account has not been opened")
    if state.status is Status.CLOSED:
        raise Rejected("account_closed", "this account is closed")
    if isinstance(command, Deposit):
        return [Deposited(amount=command.amount, reference=command.reference)]
    if isinstance(command, Withdraw):
        if command.amount > state.balance:
            raise Rejected(
                "insufficient_funds",
                f"balance {state.balance} is less than the withdrawal {command.amount}",
            )
        return [Withdrawn(amount=command.amount, reference=command.reference)]
    if isinstance(command, CloseAccount):
        if state.balance != 0:
            raise Rejected("balance_not_zero", f"balance is {state.balance}; close needs zero")
        return [AccountClosed()]
    raise TypeError(f"account does not handle {type(command).__name__}")


def evolve(state: Account, event: Event) -> Account:
    match event:
        case AccountOpened(owner=owner):
            return replace(state, status=Status.OPEN, owner=owner)
        case Deposited(amount=amount):
            return replace(state, balance=state.balance + amount)
        case Withdrawn(amount=amount):
            return replace(state, balance=state.balance - amount)
        case AccountClosed():
            return replace(state, status=Status.CLOSED)
    raise TypeError(f"account does not apply {type(event).__name__}")


ACCOUNT_AGGREGATE: Aggregate[Account] = Aggregate(
    contract=ACCOUNT, initial=Account(), decide=decide, evolve=evolve
)
