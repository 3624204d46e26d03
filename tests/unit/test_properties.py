"""Property tests: random command sequences never break an aggregate's invariants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eventfold.aggregate import Aggregate, Rejected
from examples.bank.account import ACCOUNT_AGGREGATE, Status
from examples.bank.contracts import CloseAccount, Deposit, OpenAccount, Withdraw
from schemas.base import Command
from tests.support.counter import COUNTER_AGGREGATE, LIMIT, Increment, Reset

amounts = st.integers(min_value=1, max_value=10**6)
_storable = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
account_commands = st.one_of(
    # No NUL and no lone surrogate: commands refuse both (unstorable_value).
    st.builds(OpenAccount, owner=st.text(_storable, min_size=1, max_size=20)),
    st.builds(Deposit, amount=amounts),
    st.builds(Withdraw, amount=amounts),
    st.just(CloseAccount()),
)


def run(aggregate: Aggregate, commands: list[Command]) -> tuple[object, list[object], list[str]]:
    state, events, refusals = aggregate.initial, [], []
    for c in commands:
        try:
            new = aggregate.decide(state, c)
        except Rejected as r:
            refusals.append(r.code)
            continue
        for e in new:
            state = aggregate.evolve(state, e)
            events.append(e)
    return state, events, refusals


@settings(max_examples=300, deadline=None)
@given(st.lists(account_commands, max_size=40))
def test_account_invariants(commands: list[Command]) -> None:
    state, events, _ = run(ACCOUNT_AGGREGATE, commands)
    folded = ACCOUNT_AGGREGATE.initial
    for e in events:
        folded = ACCOUNT_AGGREGATE.evolve(folded, e)
        assert folded.balance >= 0, "a balance went negative"
    # Folding the events again gives the same state: evolve is deterministic.
    assert ACCOUNT_AGGREGATE.fold(events) == state
    names = [type(e).__name__ for e in events]
    assert names.count("AccountOpened") <= 1
    if names:
        assert names[0] == "AccountOpened"
    if "AccountClosed" in names:
        assert names[-1] == "AccountClosed" and state.balance == 0 and state.status is Status.CLOSED
    deposits = sum(e.amount for e in events if type(e).__name__ == "Deposited")
    withdrawals = sum(e.amount for e in events if type(e).__name__ == "Withdrawn")
    assert state.balance == deposits - withdrawals


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.builds(Increment, by=st.integers(1, 1000)), st.just(Reset())), max_size=40))
def test_counter_never_exceeds_its_limit(commands: list[Command]) -> None:
    state, events, _ = run(COUNTER_AGGREGATE, commands)
    value = 0
    for e in events:
        value = COUNTER_AGGREGATE.evolve(
            COUNTER_AGGREGATE.initial.model_copy(update={"value": value}), e
        ).value
        assert 0 <= value <= LIMIT
    assert value == state.value
