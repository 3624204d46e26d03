"""eventfold.testing: deciders given events, projections events in and rows out, in memory.

Written against the bank example and the test-only counter; the failing cases
check that a wrong expectation fails, and that its message says what was
expected and what happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Integer, MetaData, String, Table

from eventfold.aggregate import Aggregate, replace
from eventfold.projection import Change, Doc, Handler, Projection
from eventfold.testing import (
    OCCURRED_AT,
    ProjectionFailed,
    envelope,
    event_id_at,
    given,
    project,
)
from examples.bank.account import ACCOUNT_AGGREGATE, Account, Status
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
from examples.bank.projection import ACCOUNTS, deposited
from examples.bank.tables import account_transactions
from projector.batch import Decoded, decode
from schemas.base import Command, Event
from schemas.envelope import EnvelopeMeta
from schemas.mapper import encode_value
from tests.support.counter import COUNTER, COUNTER_AGGREGATE, Increment, Incremented, Reset, WasReset
from tests.support.tallies import audit, counting, latest, reset, tally

OPENED = AccountOpened(owner="a")
FUNDED = (OPENED, Deposited(amount=9, reference=""))


# Deciders


def test_then_passes_on_the_decided_events_and_state_applies_them() -> None:
    outcome = given(ACCOUNT_AGGREGATE, *FUNDED).when(Withdraw(amount=5, reference="rent"))
    assert outcome.then(Withdrawn(amount=5, reference="rent")) is outcome
    assert outcome.events == [Withdrawn(amount=5, reference="rent")]
    assert outcome.state == Account(status=Status.OPEN, owner="a", balance=4)
    assert outcome.rejection is None


def test_given_state_is_the_history_folded() -> None:
    assert given(ACCOUNT_AGGREGATE).state == Account()
    assert given(ACCOUNT_AGGREGATE, *FUNDED).state == Account(status=Status.OPEN, owner="a", balance=9)


def test_rejects_passes_on_the_code_and_returns_the_rejection() -> None:
    rejected = given(ACCOUNT_AGGREGATE, *FUNDED).when(Withdraw(amount=10)).rejects("insufficient_funds")
    assert rejected.detail == "balance 9 is less than the withdrawal 10"
    given(ACCOUNT_AGGREGATE, *FUNDED).when(Withdraw(amount=10)).rejects("insufficient_funds", match=r"\b10$")


def test_when_chains_commands_on_the_events_decided_so_far() -> None:
    final = (
        given(ACCOUNT_AGGREGATE)
        .when(OpenAccount(owner="ann"))
        .when(Deposit(amount=70))
        .when(Withdraw(amount=70))
        .when(CloseAccount())
        .then(AccountClosed())
    )
    assert final.history == (
        AccountOpened(owner="ann"),
        Deposited(amount=70, reference=""),
        Withdrawn(amount=70, reference=""),
    )
    assert final.state == Account(status=Status.CLOSED, owner="ann", balance=0)


def test_counter_accepts_with_no_events_and_rejects_an_overflow() -> None:
    given(COUNTER_AGGREGATE).when(Reset()).then()
    given(COUNTER_AGGREGATE, Incremented(by=3)).when(Reset()).then(WasReset())
    given(COUNTER_AGGREGATE, Incremented(by=95)).when(Increment(by=10)).rejects(
        "counter_overflow", match=r"95 \+ 10 exceeds 100"
    )


def test_then_on_a_rejected_command_fails_with_the_rejection() -> None:
    outcome = given(ACCOUNT_AGGREGATE, OPENED).when(Withdraw(amount=5))
    with pytest.raises(AssertionError) as err:
        outcome.then(Withdrawn(amount=5, reference=""))
    assert str(err.value) == (
        "expected Withdraw(amount=5, reference='') on "
        "Account(status=<Status.OPEN: 'open'>, owner='a', balance=0) to be accepted with\n"
        "  Withdrawn(amount=5, reference='')\n"
        "but it was rejected with 'insufficient_funds': balance 0 is less than the withdrawal 5"
    )


def test_rejects_on_an_accepted_command_fails_with_its_events() -> None:
    outcome = given(ACCOUNT_AGGREGATE, *FUNDED).when(Withdraw(amount=5))
    with pytest.raises(AssertionError) as err:
        outcome.rejects("insufficient_funds")
    assert str(err.value) == (
        "expected rejection 'insufficient_funds' but Withdraw(amount=5, reference='') on "
        "Account(status=<Status.OPEN: 'open'>, owner='a', balance=9) was accepted with\n"
        "  Withdrawn(amount=5, reference='')"
    )


def test_rejects_with_another_code_or_detail_fails() -> None:
    outcome = given(ACCOUNT_AGGREGATE, OPENED, AccountClosed()).when(Deposit(amount=1))
    with pytest.raises(
        AssertionError,
        match=r"expected rejection 'insufficient_funds' of Deposit\(.*but it was rejected with "
        r"'account_closed': this account is closed$",
    ):
        outcome.rejects("insufficient_funds")
    with pytest.raises(
        AssertionError,
        match=r"rejection 'account_closed' of Deposit.*: detail 'this account is closed' "
        r"does not match 'frozen'",
    ):
        outcome.rejects("account_closed", match="frozen")


def test_then_with_other_events_fails_with_both_lists_and_the_difference() -> None:
    outcome = given(ACCOUNT_AGGREGATE, *FUNDED).when(Withdraw(amount=5))
    with pytest.raises(AssertionError) as err:
        outcome.then(Withdrawn(amount=5, reference="x"))
    assert str(err.value).endswith(
        "wrong events\n"
        "expected:\n  Withdrawn(amount=5, reference='x')\n"
        "got:\n  Withdrawn(amount=5, reference='')\n"
        "event 0 (Withdrawn): reference: expected 'x', got ''"
    )
    with pytest.raises(AssertionError, match=r"event 0: expected Deposited, got Withdrawn"):
        outcome.then(Deposited(amount=5, reference=""))
    with pytest.raises(
        AssertionError,
        match=r"expected:\n  \(no events\)\ngot:\n  Withdrawn\(amount=5, reference=''\)\n"
        r"expected 0 events, got 1$",
    ):
        outcome.then()


def test_events_and_state_of_a_rejected_command_fail() -> None:
    outcome = given(ACCOUNT_AGGREGATE).when(Deposit(amount=1))
    assert outcome.rejection is not None and outcome.rejection.code == "account_not_open"
    for read in (lambda: outcome.events, lambda: outcome.state, lambda: outcome.when(Deposit(amount=1))):
        with pytest.raises(
            AssertionError, match=r"to be accepted, but it was rejected with 'account_not_open'"
        ):
            read()


def test_a_command_or_event_of_another_contract_fails() -> None:
    with pytest.raises(AssertionError, match=r"Increment is not a command of the 'account' contract"):
        given(ACCOUNT_AGGREGATE).when(Increment(by=1))
    with pytest.raises(AssertionError, match=r"given: Incremented is not an event of the 'account' contract"):
        given(ACCOUNT_AGGREGATE, Incremented(by=1))


def test_decide_returning_an_undeclared_event_fails() -> None:
    stray: Aggregate[Any] = Aggregate(
        COUNTER, COUNTER_AGGREGATE.initial, lambda s, c: [AccountOpened(owner="x")], COUNTER_AGGREGATE.evolve
    )
    with pytest.raises(
        AssertionError,
        match=r"decide\(Reset\): AccountOpened is not an event of the 'counter' contract "
        r"\(the projector would dead-letter it as unknown_type\)",
    ):
        given(stray).when(Reset())


class Loose(BaseModel):
    model_config = ConfigDict(frozen=True)
    seen: Any = None


def test_a_state_that_does_not_survive_the_snapshot_fails() -> None:
    # An untyped field holding a tuple is reloaded from JSON as a list, so the
    # write store would hand decide another state than the fold.
    def evolve(state: Loose, event: Event) -> Loose:
        return replace(state, seen=(1, 2))

    def decide(state: Loose, command: Command) -> Sequence[Event]:
        return [Incremented(by=1)]

    careless: Aggregate[Loose] = Aggregate(COUNTER, Loose(), decide, evolve)
    with pytest.raises(
        AssertionError,
        match=r"does not survive the write store's snapshot:\n  folded:   Loose\(seen=\(1, 2\)\)\n"
        r"  reloaded: Loose\(seen=\[1, 2\]\)",
    ):
        given(careless, Incremented(by=1)).when(Reset())
    given(careless).when(Reset()).then(Incremented(by=1))  # the initial state is never reloaded


def test_errors_other_than_a_rejection_propagate() -> None:
    def decide(state: Any, command: Command) -> Sequence[Event]:
        raise TypeError("not handled")

    broken: Aggregate[Any] = Aggregate(COUNTER, COUNTER_AGGREGATE.initial, decide, COUNTER_AGGREGATE.evolve)
    with pytest.raises(TypeError, match="not handled"):
        given(broken).when(Reset())


# Envelopes


def test_envelope_defaults_to_a_fixed_time_and_a_stable_id_per_position() -> None:
    e = envelope(Deposited(amount=5, reference="r"), stream_type=ACCOUNTS, stream_id="a-1", version=2)
    assert (e.stream_type, e.stream_id, e.version, e.type, e.schema_version) == (
        "account",
        "a-1",
        2,
        "Deposited",
        2,
    )
    assert e.occurred_at == OCCURRED_AT and e.data == {"amount": 5, "reference": "r"}
    assert e.event_id == event_id_at("account", "a-1", 2)
    assert envelope(OPENED, stream_type="account", stream_id="a-1").event_id != event_id_at(
        "account", "a-1", 2
    )
    for kind in (ACCOUNT, ACCOUNT_AGGREGATE, "account"):
        assert envelope(OPENED, stream_type=kind, stream_id="a-1") == envelope(
            OPENED, stream_type=ACCOUNTS, stream_id="a-1"
        )
    own = uuid.uuid4()
    later = OCCURRED_AT + timedelta(hours=1)
    custom = envelope(
        OPENED, stream_type="account", stream_id="a-1", event_id=own, occurred_at=later, correlation_id="c"
    )
    assert (custom.event_id, custom.occurred_at, custom.correlation_id) == (own, later, "c")


@dataclass
class Rec:
    value: bytes | None
    topic: str = "t"
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"a-1"
    headers: Sequence[tuple[str, bytes]] = ()


def test_an_envelope_is_a_record_the_projector_reads_and_a_meta_handlers_take() -> None:
    event = Deposited(amount=5, reference="r")
    e = envelope(event, stream_type=ACCOUNTS, stream_id="a-1", version=2)
    got = decode(ACCOUNTS, Rec(encode_value(e)))
    assert isinstance(got, Decoded) and got.event == event and got.envelope.event_id == e.event_id
    doc = {"balance": 1}
    assert deposited(doc, e, event).doc["balance"] == 6


# Projections


def ledger_row(
    version: int, kind: str, amount: int, after: int, reference: str = "", **kw: Any
) -> dict[str, Any]:
    return {
        "account_id": kw.get("account_id", "a-1"),
        "version": version,
        "type": kind,
        "amount": amount,
        "balance_after": after,
        "occurred_at": kw.get("at", OCCURRED_AT),
        "reference": reference,
    }


def test_project_gives_the_document_with_id_and_version_and_the_child_rows() -> None:
    view = project(
        ACCOUNTS,
        AccountOpened(owner="ann"),
        Deposited(amount=70, reference="pay"),
        Withdrawn(amount=20, reference=""),
        stream_id="a-1",
    )
    assert view.doc == {
        "id": "a-1",
        "owner": "ann",
        "balance": 50,
        "status": "open",
        "version": 3,
        "opened_at": OCCURRED_AT,
        "updated_at": OCCURRED_AT,
    }
    assert view.rows(account_transactions) == [
        ledger_row(2, "deposit", 70, 70, "pay"),
        ledger_row(3, "withdrawal", 20, 50),
    ]
    assert view.rows("accounts") == [view.doc]


def test_several_streams_keep_their_own_versions_documents_and_rows() -> None:
    later = OCCURRED_AT + timedelta(minutes=5)
    view = (
        project(ACCOUNTS, AccountOpened(owner="a"), stream_id="a-1")
        .project(AccountOpened(owner="b"), Deposited(amount=5, reference=""), stream_id="b-1")
        .project(Deposited(amount=3, reference="late"), stream_id="a-1", occurred_at=later)
    )
    assert {sid: (d["version"], d["balance"]) for sid, d in view.docs.items()} == {
        "a-1": (2, 3),
        "b-1": (2, 5),
    }
    a = view.document("a-1")
    assert (a["opened_at"], a["updated_at"]) == (OCCURRED_AT, later)
    assert view.rows(account_transactions) == [
        ledger_row(2, "deposit", 5, 5, account_id="b-1"),
        ledger_row(2, "deposit", 3, 3, "late", at=later),
    ]
    assert view.rows(account_transactions, stream_id="b-1") == [
        ledger_row(2, "deposit", 5, 5, account_id="b-1")
    ]
    assert view.rows(account_transactions.name, stream_id="a-1") == [
        ledger_row(2, "deposit", 3, 3, "late", at=later)
    ]


def test_a_read_model_is_not_changed_by_projecting_onto_it() -> None:
    base = project(ACCOUNTS, OPENED, stream_id="a-1")
    more = base.project(Deposited(amount=5, reference=""), stream_id="a-1")
    assert base.doc["balance"] == 0 and base.rows(account_transactions) == []
    assert more.doc["balance"] == 5 and len(more.rows(account_transactions)) == 1


def test_a_failing_handler_fails_as_the_runtime_would_dead_letter_it() -> None:
    with pytest.raises(
        ProjectionFailed,
        match=r"projection 'accounts' cannot apply Deposited \(stream 'a-1', version 1\): handler_error: ",
    ) as err:
        project(ACCOUNTS, Deposited(amount=1, reference=""), stream_id="a-1")
    assert (err.value.reason, err.value.stream_id, err.value.version) == ("handler_error", "a-1", 1)
    assert isinstance(err.value.__cause__, AssertionError)  # the handler's own error, traceback and all
    assert isinstance(err.value, AssertionError)


def test_events_the_projector_cannot_read_fail_with_its_reason() -> None:
    with pytest.raises(ProjectionFailed, match=r"cannot apply Incremented .*: unknown_type: Incremented v1"):
        project(ACCOUNTS, Incremented(by=1), stream_id="a-1")
    # Unvalidated, an event can carry what its model refuses; the projector refuses it too.
    too_long = AccountOpened.model_construct(owner="x" * 201)
    with pytest.raises(ProjectionFailed, match=r"invalid_data: owner: String should have at most 200"):
        project(ACCOUNTS, too_long, stream_id="a-1")


def test_reading_a_document_that_is_not_there_fails() -> None:
    view = project(ACCOUNTS, OPENED, stream_id="a-1").project(OPENED, stream_id="b-1")
    with pytest.raises(AssertionError, match=r"expected one document in 'accounts', found 2 \(a-1, b-1\)"):
        _ = view.doc
    with pytest.raises(AssertionError, match=r"no document for stream 'c-1' \(documents: a-1, b-1\)"):
        view.document("c-1")
    with pytest.raises(AssertionError, match=r"'test_counters' is not a table of projection 'accounts'"):
        view.rows("test_counters")


def test_left_out_columns_hold_their_server_default_or_null_as_the_database_stores_them() -> None:
    view = project(counting(), Incremented(by=2), stream_id="c-1")
    assert view.doc == {
        "id": "c-1",
        "version": 1,
        "value": 2,
        "label": "none",
        "resets": 0,
        "note": None,
        "weight": None,  # a Python-side default: the writer inserts by column, so it is not applied
    }
    view = view.project(WasReset(), stream_id="c-1")
    assert (view.doc["label"], view.doc["resets"]) == ("reset", 1)
    # The document replaces the row: the next handler leaves `label` out, so it is back to its default.
    assert view.project(Incremented(by=1), stream_id="c-1").doc == {
        "id": "c-1",
        "version": 3,
        "value": 1,
        "label": "none",
        "resets": 1,
        "note": None,
        "weight": None,
    }


def test_child_rows_are_keyed_like_their_table_and_a_colliding_row_is_dropped() -> None:
    view = project(counting(), Incremented(by=2), Incremented(by=3), stream_id="c-1", correlation_id="corr")
    assert view.rows(latest) == [{"counter_id": "c-1", "value": 2}]  # ON CONFLICT DO NOTHING
    assert view.rows(audit) == [
        {"seq": 1, "event_id": str(event_id_at("counter", "c-1", 1)), "correlation_id": "corr"},
        {"seq": 2, "event_id": str(event_id_at("counter", "c-1", 2)), "correlation_id": "corr"},
    ]
    other = view.project(Incremented(by=1), stream_id="c-2")
    assert other.rows(latest, stream_id="c-2") == [{"counter_id": "c-2", "value": 1}]


def handler_returning(doc: Doc, *rows: tuple[Table, dict[str, Any]]) -> Handler:
    def handle(_doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
        return Change(doc, list(rows))

    return handle


@pytest.mark.parametrize(
    ("handler", "reason", "detail"),
    [
        (handler_returning({"value": 1, "extra": 2}), "not_stored", "test_tallies has no column 'extra'"),
        (
            handler_returning({"value": 1}, (account_transactions, {"account_id": "c-1"})),
            "not_stored",
            "rows for 'account_transactions', which is not a child table of the projection",
        ),
        (
            handler_returning({"label": "x"}),
            "write_rejected",
            "test_tallies.value is NOT NULL and has no server default, but the row leaves it out",
        ),
        (
            handler_returning({"value": None}),
            "write_rejected",
            "test_tallies.value is NOT NULL but the row sets it to None",
        ),
        (
            handler_returning({"value": 1, "label": "x" * 11}),
            "not_stored",
            r"test_tallies.label: 11 characters do not fit VARCHAR\(10\); PostgreSQL would keep the first 10",
        ),
        (
            handler_returning({"value": 1, "note": "a\x00b"}),
            "write_rejected",
            r"test_tallies.note: contains a NUL character",
        ),
        (
            handler_returning({"value": 1}, (latest, {"counter_id": "c-1", "value": 1, "when": 0})),
            "not_stored",
            "test_tally_latest has no column 'when'",
        ),
    ],
)
def test_rows_the_runtime_would_refuse_drop_or_cut_fail(handler: Handler, reason: str, detail: str) -> None:
    with pytest.raises(ProjectionFailed, match=rf"cannot apply Incremented .*: {reason}: {detail}") as err:
        project(counting(Incremented=handler), Incremented(by=1), stream_id="c-1")
    assert err.value.reason == reason


def test_a_not_null_column_with_only_a_python_default_names_the_reason() -> None:
    strict = Table(
        "test_strict",
        MetaData(),
        Column("id", String(20), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("value", Integer, nullable=False),
        Column("resets", Integer),
        Column("weight", Integer, nullable=False, default=1),
    )
    proj = Projection(
        "test_strict",
        COUNTER,
        strict,
        {"Incremented": tally, "WasReset": reset},
        child_tables=(latest, audit),
    )
    with pytest.raises(
        ProjectionFailed, match=r"test_strict.weight .*leaves it out \(a Python-side default is not applied"
    ):
        project(proj, Incremented(by=1), stream_id="c-1")


def test_handlers_read_the_meta_the_runtime_delivers() -> None:
    seen: list[EnvelopeMeta] = []

    def spy(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
        seen.append(env)
        return tally(doc, env, event)

    at = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
    project(
        counting(Incremented=spy),
        Incremented(by=1),
        Incremented(by=2),
        stream_id="c-9",
        occurred_at=at,
        correlation_id="corr",
        causation_id="cmd",
    )
    assert [
        (m.stream_type, m.stream_id, m.version, m.type, m.occurred_at, m.correlation_id, m.causation_id)
        for m in seen
    ] == [
        ("counter", "c-9", 1, "Incremented", at, "corr", "cmd"),
        ("counter", "c-9", 2, "Incremented", at, "corr", "cmd"),
    ]
    assert [m.event_id for m in seen] == [event_id_at("counter", "c-9", v) for v in (1, 2)]
