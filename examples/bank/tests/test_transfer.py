"""The transfer aggregate and its saga, every path, as pure functions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from eventfold import Dispatch
from eventfold.testing import OCCURRED_AT, ProcessRun, envelope, given, process, project
from examples.bank.contracts import AccountOpened, Deposit, Deposited, Withdraw, Withdrawn
from examples.bank.tables import transfer_steps
from examples.bank.transfer import (
    TRANSFER_AGGREGATE,
    CompensateTransfer,
    CompleteTransfer,
    FailTransfer,
    RecordDebit,
    RequestTransfer,
    TransferCompensated,
    TransferCompleted,
    TransferDebited,
    TransferFailed,
    TransferRequested,
)
from examples.bank.transfer_process import Phase, TransferProcess, transfer_process
from examples.bank.transfers import TRANSFERS
from schemas.base import Command, Event

SAGA = transfer_process(deadline_s=30)
REQUESTED = TransferRequested(source="a", target="b", amount=40)
WITHDRAW = Dispatch("account", "a", Withdraw(amount=40, reference="t-1"))
DEPOSIT = Dispatch("account", "b", Deposit(amount=40, reference="t-1"))
REFUND = Dispatch("account", "a", Deposit(amount=40, reference="t-1"))
DEBIT = Dispatch("transfer", "t-1", RecordDebit())
COMPLETE = Dispatch("transfer", "t-1", CompleteTransfer())


def requested() -> ProcessRun[TransferProcess]:
    return process(SAGA).when(REQUESTED, stream_id="t-1")


def withdrawn() -> ProcessRun[TransferProcess]:
    return requested().when(Withdrawn(amount=40, reference="t-1"), stream_id="a", version=3)


def test_a_transfer_completes_withdraw_then_deposit_then_complete() -> None:
    run = requested().then(WITHDRAW)
    assert run.deadline == OCCURRED_AT + timedelta(seconds=30)
    run = run.when(Withdrawn(amount=40, reference="t-1"), stream_id="a", version=3).then(DEBIT, DEPOSIT)
    run = run.when(TransferDebited(), stream_id="t-1").then()
    run = run.when(Deposited(amount=40, reference="t-1"), stream_id="b", version=2).then(COMPLETE)
    assert run.deadline is None and not run.done
    run = run.when(TransferCompleted(), stream_id="t-1").then()
    assert run.done and run.state.phase is Phase.ENDED


def test_a_refused_withdrawal_fails_the_transfer_and_moves_no_money() -> None:
    run = requested().refused("insufficient_funds", "balance 0 is less than the withdrawal 40")
    fail = FailTransfer(reason="insufficient_funds: balance 0 is less than the withdrawal 40")
    run.then(Dispatch("transfer", "t-1", fail))
    assert run.deadline is None
    assert run.when(TransferFailed(reason=fail.reason), stream_id="t-1").then().done


def test_a_refused_deposit_is_compensated_by_a_refund_to_the_source() -> None:
    run = withdrawn().refused("account_closed", "this account is closed", command=1).then(REFUND)
    assert run.state.phase is Phase.REFUNDING and run.deadline is None
    run = run.when(Deposited(amount=40, reference="t-1"), stream_id="a", version=4)
    run.then(Dispatch("transfer", "t-1", CompensateTransfer(reason="account_closed: this account is closed")))
    assert run.when(TransferCompensated(reason="x"), stream_id="t-1").done


def test_a_deadline_after_the_withdrawal_refunds_once_and_ignores_the_late_withdrawal() -> None:
    run = requested().deadline_passes().then(REFUND)
    assert run.state.reason == "not completed within 30 s"
    late = run.when(Withdrawn(amount=40, reference="t-1"), stream_id="a", version=3).then()
    assert late.state.phase is Phase.REFUNDING  # no deposit to the target, no second refund
    late.when(Deposited(amount=40, reference="t-1"), stream_id="a").then(
        Dispatch("transfer", "t-1", CompensateTransfer(reason="not completed within 30 s"))
    )


def test_a_deadline_after_the_deposit_completes_the_transfer() -> None:
    withdrawn().deadline_passes().then(COMPLETE)


def test_a_refused_refund_leaves_the_instance_stuck() -> None:
    run = withdrawn().refused("account_closed", "closed", command=1).refused("account_closed", "closed")
    assert run.stuck == "account_closed: closed"
    assert run.when(Deposited(amount=40, reference="t-1"), stream_id="a").ignored


def test_movements_of_other_transfers_or_none_are_ignored() -> None:
    assert process(SAGA).when(Deposited(amount=5, reference="salary"), stream_id="a").ignored
    assert process(SAGA).when(AccountOpened(owner="o"), stream_id="a").ignored
    assert requested().when(Withdrawn(amount=40, reference="t-2"), stream_id="a").ignored
    # A movement of the target with this reference before the withdrawal moves nothing.
    assert requested().when(Deposited(amount=40, reference="t-1"), stream_id="b").then().state.phase is (
        Phase.WITHDRAWING
    )


def test_an_ended_transfer_stays_ended() -> None:
    ended = (
        withdrawn()
        .when(Deposited(amount=40, reference="t-1"), stream_id="b")
        .when(TransferCompleted(), stream_id="t-1")
    )
    assert ended.done
    # The runtime hands a done instance no more events; the saga would keep it ended anyway,
    # also for the request delivered again (an at-least-once publisher's repeat).
    for event, kind, stream in (
        (Deposited(amount=1, reference="t-1"), "account", "b"),
        (REQUESTED, "transfer", "t-1"),
    ):
        assert ended.when(event, stream_id=stream).ignored
        step = SAGA.handle(ended.state, envelope(event, stream_type=kind, stream_id=stream), event)
        assert step.done and step.state.phase is Phase.ENDED and not step.commands and step.deadline is None


@pytest.mark.parametrize(
    ("history", "command", "code"),
    [
        ([REQUESTED], RequestTransfer(source="a", target="b", amount=1), "transfer_exists"),
        ([], RequestTransfer(source="a", target="a", amount=1), "same_account"),
        ([], CompleteTransfer(), "transfer_not_requested"),
        ([REQUESTED], CompleteTransfer(), "transfer_not_debited"),
        ([REQUESTED, TransferDebited()], FailTransfer(reason="x"), "transfer_debited"),
        ([REQUESTED, TransferFailed(reason="x")], CompensateTransfer(reason="x"), "transfer_ended"),
        ([REQUESTED, TransferDebited(), TransferCompleted()], CompleteTransfer(), "transfer_ended"),
    ],
)
def test_transfer_rules(history: list[Event], command: Command, code: str) -> None:
    given(TRANSFER_AGGREGATE, *history).when(command).rejects(code)


def test_a_transfer_ends_once() -> None:
    given(TRANSFER_AGGREGATE).when(RequestTransfer(source="a", target="b", amount=3)).then(
        TransferRequested(source="a", target="b", amount=3)
    ).when(RecordDebit()).then(TransferDebited()).when(CompleteTransfer()).then(TransferCompleted())


def test_the_transfers_view_keeps_status_and_steps() -> None:
    view = project(
        TRANSFERS,
        REQUESTED,
        TransferDebited(),
        TransferCompensated(reason="account_closed: closed"),
        stream_id="t-1",
    )
    assert view.doc["status"] == "compensated" and view.doc["reason"] == "account_closed: closed"
    assert (view.doc["source"], view.doc["target"], view.doc["amount"]) == ("a", "b", 40)
    assert [r["step"] for r in view.rows(transfer_steps)] == ["requested", "debited", "compensated"]
