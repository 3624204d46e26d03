"""The account aggregate's rules, as pure functions."""

from __future__ import annotations

import pytest

from eventfold.aggregate import Rejected
from examples.bank.account import ACCOUNT_AGGREGATE, Account, Status, decide, evolve
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


def run(*commands: object) -> Account:
    state = Account()
    for c in commands:
        for e in decide(state, c):  # type: ignore[arg-type]
            state = evolve(state, e)
    return state


def test_open_deposit_withdraw_close() -> None:
    state = run(OpenAccount(owner="ann"), Deposit(amount=70), Withdraw(amount=70), CloseAccount())
    assert state == Account(status=Status.CLOSED, owner="ann", balance=0)


def test_decide_returns_events_without_changing_state() -> None:
    state = run(OpenAccount(owner="ann"))
    assert decide(state, Deposit(amount=5)) == [Deposited(amount=5, reference="")]
    assert state.balance == 0


@pytest.mark.parametrize(
    ("history", "command", "code"),
    [
        ([OpenAccount(owner="a")], OpenAccount(owner="b"), "account_exists"),
        ([], Deposit(amount=1), "account_not_open"),
        ([], CloseAccount(), "account_not_open"),
        ([OpenAccount(owner="a"), Deposit(amount=5)], Withdraw(amount=6), "insufficient_funds"),
        ([OpenAccount(owner="a"), Deposit(amount=5)], CloseAccount(), "balance_not_zero"),
        ([OpenAccount(owner="a"), CloseAccount()], Deposit(amount=1), "account_closed"),
        ([OpenAccount(owner="a"), CloseAccount()], OpenAccount(owner="a"), "account_exists"),
    ],
)
def test_rules(history: list[object], command: object, code: str) -> None:
    state = run(*history)
    with pytest.raises(Rejected) as err:
        decide(state, command)  # type: ignore[arg-type]
    assert err.value.code == code


def test_withdraw_whole_balance_is_allowed() -> None:
    state = run(OpenAccount(owner="a"), Deposit(amount=5))
    assert decide(state, Withdraw(amount=5)) == [Withdrawn(amount=5, reference="")]


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
