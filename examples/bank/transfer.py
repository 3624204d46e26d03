"""The `transfer` aggregate: a money transfer between two accounts, as the saga records it.

A client asks for a transfer (`RequestTransfer`, the stream id is the transfer
id); the `transfers` process manager (examples/bank/transfer_process.py) moves
the money on the account streams and records each step here. The aggregate
keeps the record straight: a transfer ends once, completed, failed or
compensated, and only a debited transfer can complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from eventfold.aggregate import Aggregate, Rejected, replace
from schemas.base import Command, Event
from schemas.registry import declare_stream

AccountId = Field(min_length=1, max_length=128)
Reason = Field(default="", max_length=500)


class RequestTransfer(Command):
    source: str = AccountId
    target: str = AccountId
    amount: int = Field(gt=0, le=10**15)


class RecordDebit(Command):
    pass


class CompleteTransfer(Command):
    pass


class FailTransfer(Command):
    reason: str = Reason


class CompensateTransfer(Command):
    reason: str = Reason


class TransferRequested(Event):
    source: str = Field(max_length=128)
    target: str = Field(max_length=128)
    amount: int


class TransferDebited(Event):
    pass


class TransferCompleted(Event):
    pass


class TransferFailed(Event):
    reason: str = Field(max_length=500)


class TransferCompensated(Event):
    reason: str = Field(max_length=500)


TRANSFER = declare_stream(
    "transfer",
    commands=[RequestTransfer, RecordDebit, CompleteTransfer, FailTransfer, CompensateTransfer],
    events=[TransferRequested, TransferDebited, TransferCompleted, TransferFailed, TransferCompensated],
)


class Status(StrEnum):
    NEW = "new"
    REQUESTED = "requested"
    DEBITED = "debited"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


_ENDED = (Status.COMPLETED, Status.FAILED, Status.COMPENSATED)


class Transfer(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status = Status.NEW
    source: str = ""
    target: str = ""
    amount: int = 0


def decide(state: Transfer, command: Command) -> Sequence[Event]:
    if isinstance(command, RequestTransfer):
        if state.status is not Status.NEW:
            raise Rejected("transfer_exists", "this transfer has already been requested")
        if command.source == command.target:
            raise Rejected("same_account", "a transfer needs two different accounts")
        return [TransferRequested(source=command.source, target=command.target, amount=command.amount)]
    if state.status is Status.NEW:
        raise Rejected("transfer_not_requested", "this transfer has not been requested")
    if state.status in _ENDED:
        raise Rejected("transfer_ended", f"this transfer is {state.status.value}")
    if isinstance(command, RecordDebit):
        if state.status is not Status.REQUESTED:
            raise Rejected("transfer_debited", "this transfer is already debited")
        return [TransferDebited()]
    if isinstance(command, CompleteTransfer):
        if state.status is not Status.DEBITED:
            raise Rejected("transfer_not_debited", "only a debited transfer can complete")
        return [TransferCompleted()]
    if isinstance(command, FailTransfer):
        if state.status is not Status.REQUESTED:
            raise Rejected("transfer_debited", "a debited transfer is compensated, not failed")
        return [TransferFailed(reason=command.reason)]
    if isinstance(command, CompensateTransfer):
        return [TransferCompensated(reason=command.reason)]
    raise TypeError(f"transfer does not handle {type(command).__name__}")


def evolve(state: Transfer, event: Event) -> Transfer:
    match event:
        case TransferRequested(source=source, target=target, amount=amount):
            return replace(state, status=Status.REQUESTED, source=source, target=target, amount=amount)
        case TransferDebited():
            return replace(state, status=Status.DEBITED)
        case TransferCompleted():
            return replace(state, status=Status.COMPLETED)
        case TransferFailed():
            return replace(state, status=Status.FAILED)
        case TransferCompensated():
            return replace(state, status=Status.COMPENSATED)
    raise TypeError(f"transfer does not apply {type(event).__name__}")


TRANSFER_AGGREGATE: Aggregate[Transfer] = Aggregate(
    contract=TRANSFER, initial=Transfer(), decide=decide, evolve=evolve
)
