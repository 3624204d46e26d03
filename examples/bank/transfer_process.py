"""The money-transfer saga: the `transfers` process manager, pure functions only.

One instance per transfer (its id). Each account movement carries the
transfer id as its `reference`, which is how the account events come back to
their transfer:

    TransferRequested        -> Withdraw from the source          (withdrawing)
    Withdrawn on the source  -> RecordDebit, Deposit to the target (depositing)
    Deposited on the target  -> CompleteTransfer                   (completing)
    TransferCompleted        -> done

A refused withdrawal fails the transfer (FailTransfer). A refused deposit (the
target is closed or was never opened) is compensated: the amount goes back to
the source, then CompensateTransfer. A deadline that passes while the money is
withdrawn but not yet deposited compensates too; one that passes after the
deposit was accepted completes the transfer (the money has moved). The
runtime fires a deadline only once every command sent so far was accepted or
refused, so each branch knows what happened to the money: a deposit is only
ever sent after its withdrawal was seen, and a refund only once, from the one
phase that owes it.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict

from eventfold.aggregate import replace
from eventfold.process import Dispatch, ProcessManager, Refusal, Step
from examples.bank.contracts import ACCOUNT, Deposit, Deposited, Withdraw, Withdrawn
from examples.bank.transfer import (
    TRANSFER,
    CompensateTransfer,
    CompleteTransfer,
    FailTransfer,
    RecordDebit,
    TransferCompensated,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
)
from schemas.base import Event
from schemas.envelope import EnvelopeMeta

DEFAULT_DEADLINE_S = 30.0


class Phase(StrEnum):
    NEW = "new"
    WITHDRAWING = "withdrawing"
    DEPOSITING = "depositing"
    COMPLETING = "completing"
    FAILING = "failing"
    REFUNDING = "refunding"
    COMPENSATING = "compensating"
    ENDED = "ended"


class TransferProcess(BaseModel):
    model_config = ConfigDict(frozen=True)

    phase: Phase = Phase.NEW
    source: str = ""
    target: str = ""
    amount: int = 0
    deadline: AwareDatetime | None = None
    reason: str = ""


def correlate(env: EnvelopeMeta, event: Event) -> str | None:
    """A transfer's own events by stream id; account movements by their reference."""
    if env.stream_type == TRANSFER.stream_type:
        return env.stream_id
    if isinstance(event, Withdrawn | Deposited) and event.reference:
        return event.reference
    return None


def _transfer(
    tid: str, command: CompleteTransfer | FailTransfer | CompensateTransfer | RecordDebit
) -> Dispatch:
    return Dispatch(TRANSFER.stream_type, tid, command)


def _refund(state: TransferProcess, tid: str, reason: str) -> Step[TransferProcess]:
    refund = Dispatch(ACCOUNT.stream_type, state.source, Deposit(amount=state.amount, reference=tid))
    return Step(replace(state, phase=Phase.REFUNDING, deadline=None, reason=reason), [refund])


def transfer_process(deadline_s: float = DEFAULT_DEADLINE_S) -> ProcessManager[TransferProcess]:
    """The saga, with `deadline_s` seconds for a transfer to complete after it was requested."""

    def handle(state: TransferProcess, env: EnvelopeMeta, event: Event) -> Step[TransferProcess]:
        tid = correlate(env, event)
        assert tid is not None
        if isinstance(event, TransferRequested):
            if state.phase is not Phase.NEW:  # delivered again: the transfer is under way or over
                return Step(state, deadline=state.deadline, done=state.phase is Phase.ENDED)
            deadline = env.occurred_at + timedelta(seconds=deadline_s)
            new = TransferProcess(
                phase=Phase.WITHDRAWING,
                source=event.source,
                target=event.target,
                amount=event.amount,
                deadline=deadline,
            )
            withdraw = Dispatch(
                ACCOUNT.stream_type, event.source, Withdraw(amount=event.amount, reference=tid)
            )
            return Step(new, [withdraw], deadline)
        if isinstance(event, TransferCompleted | TransferFailed | TransferCompensated):
            return Step(replace(state, phase=Phase.ENDED, deadline=None), done=True)
        if (
            isinstance(event, Withdrawn)
            and state.phase is Phase.WITHDRAWING
            and env.stream_id == state.source
        ):
            deposit = Dispatch(ACCOUNT.stream_type, state.target, Deposit(amount=state.amount, reference=tid))
            depositing = replace(state, phase=Phase.DEPOSITING)
            return Step(depositing, [_transfer(tid, RecordDebit()), deposit], state.deadline)
        if isinstance(event, Deposited) and state.phase is Phase.DEPOSITING and env.stream_id == state.target:
            return Step(
                replace(state, phase=Phase.COMPLETING, deadline=None), [_transfer(tid, CompleteTransfer())]
            )
        if isinstance(event, Deposited) and state.phase is Phase.REFUNDING and env.stream_id == state.source:
            compensate = _transfer(tid, CompensateTransfer(reason=state.reason))
            return Step(replace(state, phase=Phase.COMPENSATING), [compensate])
        # Anything else changes nothing: a movement of another phase (the
        # withdrawal seen after a deadline sent the refund), or an unrelated
        # movement whose reference happens to name no transfer, or an ended one.
        return Step(state, deadline=state.deadline, done=state.phase is Phase.ENDED)

    def on_deadline(state: TransferProcess, tid: str) -> Step[TransferProcess]:
        if state.phase is Phase.WITHDRAWING:
            # The withdrawal was accepted (a refused one fails the transfer at once).
            return _refund(state, tid, f"not completed within {deadline_s:g} s")
        if state.phase is Phase.DEPOSITING:
            # The deposit was accepted: the money has moved, the transfer completes.
            return Step(
                replace(state, phase=Phase.COMPLETING, deadline=None), [_transfer(tid, CompleteTransfer())]
            )
        return Step(replace(state, deadline=None))

    def on_refused(state: TransferProcess, tid: str, refusal: Refusal) -> Step[TransferProcess] | None:
        command = refusal.issue.command
        reason = f"{refusal.code}: {refusal.detail}"
        if state.phase is Phase.WITHDRAWING and isinstance(command, Withdraw):
            failing = replace(state, phase=Phase.FAILING, deadline=None, reason=reason)
            return Step(failing, [_transfer(tid, FailTransfer(reason=reason))])
        if state.phase is Phase.DEPOSITING and isinstance(command, Deposit):
            return _refund(state, tid, reason)
        return None  # a refused refund or record: stuck, for someone to look at

    return ProcessManager(
        name="transfers",
        contracts=[TRANSFER, ACCOUNT],
        initial=TransferProcess(),
        correlate=correlate,
        handle=handle,
        on_deadline=on_deadline,
        on_refused=on_refused,
    )
