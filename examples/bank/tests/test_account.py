"""The account aggregate's rules, as pure functions."""

from __future__ import annotations

import pytest

from eventfold.testing import given
from examples.bank.account import ACCOUNT_AGGREGATE, Account, Status, decide
from examples.bank.contracts import (
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

OPENED = AccountOpened(owner="a")
FIVE = Deposited(amount=5, reference="")


def test_open_deposit_withdraw_close() -> None:
    outcome = (
        given(ACCOUNT_AGGREGATE)
        .when(OpenAccount(owner="ann"))
        .when(Deposit(amount=70))
        .when(Withdraw(amount=70))
        .when(CloseAccount())
    )
    assert outcome.state == Account(status=Status.CLOSED, owner="ann", balance=0)


def test_decide_returns_events_without_changing_state() -> None:
    state = given(ACCOUNT_AGGREGATE, AccountOpened(owner="ann")).state
    assert decide(state, Deposit(amount=5)) == [Deposited(amount=5, reference="")]
    assert state.balance == 0


@pytest.mark.parametrize(
    ("history", "command", "code"),
    [
        ([OPENED], OpenAccount(owner="b"), "account_exists"),
        ([], Deposit(amount=1), "account_not_open"),
        ([], CloseAccount(), "account_not_open"),
        ([OPENED, FIVE], Withdraw(amount=6), "insufficient_funds"),
        ([OPENED, FIVE], CloseAccount(), "balance_not_zero"),
        ([OPENED, AccountClosed()], Deposit(amount=1), "account_closed"),
        ([OPENED, AccountClosed()], OpenAccount(owner="a"), "account_exists"),
    ],
)
def test_rules(history: list[Event], command: Command, code: str) -> None:
    given(ACCOUNT_AGGREGATE, *history).when(command).rejects(code)


def test_withdraw_whole_balance_is_allowed() -> None:
    given(ACCOUNT_AGGREGATE, OPENED, FIVE).when(Withdraw(amount=5)).then(Withdrawn(amount=5, reference=""))


def test_fold_replays_history() -> None:
    events = [
        AccountOpened(owner="z"),
        Deposited(amount=9, reference=""),
        Withdrawn(amount=4, reference="x"),
        Withdrawn(amount=5, reference=""),
        AccountClosed(),
    ]
    assert ACCOUNT_AGGREGATE.fold(events) == Account(status=Status.CLOSED, owner="z", balance=0)


@pytest.mark.parametrize("amount", [0, -1])
def test_amounts_must_be_positive(amount: int) -> None:
    with pytest.raises(ValueError):
        Deposit(amount=amount)


def test_amounts_are_integers_not_strings_or_floats() -> None:
    with pytest.raises(ValueError):
        Deposit.model_validate({"amount": "5"})
    with pytest.raises(ValueError):
        Deposit.model_validate({"amount": 5.5})
