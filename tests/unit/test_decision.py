"""How a batch of commands becomes events and rows: `decide_batch`, without a database."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from command_api.decision import Decision, Head, HeadWrite, IdempotencyWrite, StoredAnswer, decide_batch
from command_api.outcomes import Accepted, PendingCommand, Refused, Replayed, VersionConflict
from eventfold.settings import KafkaSettings
from examples.bank.account import Account, Status
from examples.bank.contracts import Deposit, OpenAccount, Withdraw
from schemas.base import Command
from schemas.mapper import decode_value
from tests.support.counter import Counter, Increment, Reset, with_counter

AGGREGATES = with_counter()
KAFKA = KafkaSettings()
OCCURRED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEW_ACCOUNT = Head(0, Account(), False)


def cmd(
    sid: str,
    command: Command,
    expected: int | None = None,
    key: str | None = None,
    request_hash: str = "hash",
    stream_type: str = "account",
    traceparent: str | None = None,
) -> PendingCommand:
    return PendingCommand(
        stream_type,
        sid,
        command,
        expected,
        key,
        request_hash,
        "corr",
        f"cmd-{sid}",
        asyncio.get_running_loop().create_future(),
        traceparent,
    )


def decide(
    batch: Sequence[PendingCommand],
    heads: Mapping[tuple[str, str], Head],
    stored: Mapping[str, StoredAnswer] | None = None,
) -> Decision:
    ids = (event_id(n) for n in itertools.count(1))
    return decide_batch(batch, heads, stored or {}, AGGREGATES, KAFKA.topic, OCCURRED, lambda: next(ids))


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def opened(owner: str, balance: int, version: int) -> Head:
    return Head(version, Account(status=Status.OPEN, owner=owner, balance=balance), True)


def state_of(row: HeadWrite) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(row.state)
    return loaded


async def test_commands_are_decided_in_batch_order_across_streams() -> None:
    batch = [
        cmd("a", OpenAccount(owner="ann")),
        cmd("b", OpenAccount(owner="bob")),
        cmd("a", Deposit(amount=5)),
        cmd("b", Deposit(amount=7)),
        cmd("a", Deposit(amount=1)),
    ]
    d = decide(batch, {("account", "a"): NEW_ACCOUNT, ("account", "b"): NEW_ACCOUNT})
    assert [(o.stream_id, o.version) for o in d.outcomes if isinstance(o, Accepted)] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("b", 2),
        ("a", 3),
    ]
    # The outbox rows are in append order, each the envelope of its event.
    assert [(r.stream_id, r.version) for r in d.records] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
    envelopes = [decode_value(r.value) for r in d.records]
    assert [str(e.event_id) for e in envelopes] == [event_id(n) for n in range(1, 6)]
    assert [e.type for e in envelopes] == ["AccountOpened"] * 2 + ["Deposited"] * 3
    assert {(e.correlation_id, e.occurred_at) for e in envelopes} == {("corr", OCCURRED)}
    assert [e.causation_id for e in envelopes] == ["cmd-a", "cmd-b", "cmd-a", "cmd-b", "cmd-a"]
    assert {r.topic for r in d.records} == {KAFKA.topic("account")}
    first = d.outcomes[0]
    assert isinstance(first, Accepted)
    assert first.events == [{"event_id": event_id(1), "type": "AccountOpened", "version": 1}]
    assert first.records == [d.records[0]]


async def test_several_commands_on_one_stream_write_one_head_at_the_last_version() -> None:
    batch = [cmd("a", Deposit(amount=5)), cmd("a", Withdraw(amount=3)), cmd("a", Deposit(amount=10))]
    d = decide(batch, {("account", "a"): opened("ann", 1, 4)})
    assert [o.version for o in d.outcomes if isinstance(o, Accepted)] == [5, 6, 7]
    assert d.created == []
    assert [(r.stream_id, r.version, r.expected) for r in d.moved] == [("a", 7, 4)]
    assert state_of(d.moved[0]) == {"status": "open", "owner": "ann", "balance": 13}


async def test_expected_version_is_checked_against_the_stream_as_the_batch_left_it() -> None:
    batch = [
        cmd("a", Deposit(amount=1), expected=3),  # as loaded: accepted, now at 4
        cmd("a", Deposit(amount=1), expected=3),  # stale within the batch
        cmd("a", Deposit(amount=1), expected=4),
        cmd("a", Deposit(amount=1), expected=9),
    ]
    d = decide(batch, {("account", "a"): opened("ann", 0, 3)})
    first, stale, third, ahead = d.outcomes
    assert isinstance(first, Accepted) and first.version == 4
    assert stale == VersionConflict(4)
    assert isinstance(third, Accepted) and third.version == 5
    assert ahead == VersionConflict(5)
    assert [r.version for r in d.records] == [4, 5]
    assert [(r.version, r.expected) for r in d.moved] == [(5, 3)]
    assert state_of(d.moved[0])["balance"] == 2


async def test_a_refused_command_leaves_its_stream_as_it_was_for_later_commands() -> None:
    batch = [
        cmd("a", Withdraw(amount=50)),
        cmd("a", Deposit(amount=5), expected=2),
        cmd("a", Withdraw(amount=50)),
        cmd("a", Withdraw(amount=15)),
    ]
    d = decide(batch, {("account", "a"): opened("ann", 10, 2)})
    too_much, deposit, still_too_much, withdraw = d.outcomes
    assert isinstance(too_much, Refused) and too_much.code == "insufficient_funds"
    assert isinstance(deposit, Accepted) and deposit.version == 3
    assert isinstance(still_too_much, Refused) and still_too_much.code == "insufficient_funds"
    assert isinstance(withdraw, Accepted) and withdraw.version == 4
    assert [r.version for r in d.records] == [3, 4]
    assert state_of(d.moved[0])["balance"] == 0


async def test_a_batch_that_changes_nothing_writes_nothing() -> None:
    heads = {("account", "a"): opened("ann", 0, 2), ("counter", "c"): Head(0, Counter(), False)}
    batch = [
        cmd("a", Withdraw(amount=1)),
        cmd("a", Deposit(amount=1), expected=1),
        # Accepted, with no events: no version, no head, no record.
        cmd("c", Reset(), stream_type="counter"),
    ]
    d = decide(batch, heads)
    refused, conflict, reset = d.outcomes
    assert isinstance(refused, Refused) and conflict == VersionConflict(2)
    assert isinstance(reset, Accepted) and (reset.version, reset.records) == (0, [])
    assert (d.created, d.moved, d.records, d.idempotency) == ([], [], [], [])


async def test_a_new_stream_is_inserted_and_an_existing_one_moved_from_its_loaded_version() -> None:
    heads = {
        ("account", "old"): opened("ann", 0, 2),
        ("account", "untouched"): opened("ann", 0, 8),
        ("counter", "new"): Head(0, Counter(), False),
    }
    batch = [
        cmd("new", Increment(by=3), stream_type="counter"),
        cmd("old", Deposit(amount=4)),
        cmd("new", Increment(by=2), stream_type="counter"),
    ]
    d = decide(batch, heads)
    assert [(r.stream_type, r.stream_id, r.version, r.expected) for r in d.created] == [
        ("counter", "new", 2, 0)
    ]
    assert state_of(d.created[0]) == {"value": 5}
    assert [(r.stream_id, r.version, r.expected) for r in d.moved] == [("old", 3, 2)]
    assert [r.topic for r in d.records] == [KAFKA.topic(t) for t in ("counter", "account", "counter")]


async def test_new_heads_come_out_in_the_order_of_the_heads_given() -> None:
    # The store passes heads in key order; writers that lock in that order cannot deadlock.
    heads = {(t, s): Head(0, Counter(), False) for t, s in [("counter", "a"), ("counter", "b")]}
    batch = [cmd(s, Increment(by=1), stream_type="counter") for s in ("b", "a")]
    d = decide(batch, heads)
    assert [r.stream_id for r in d.created] == ["a", "b"]
    assert [r.stream_id for r in d.records] == ["b", "a"]


async def test_the_heads_given_are_not_changed() -> None:
    heads = {("account", "a"): opened("ann", 0, 1)}
    before = dict(heads)
    decide([cmd("a", Deposit(amount=5))], heads)
    assert heads == before


async def test_an_idempotency_key_already_stored_is_replayed_or_refused() -> None:
    stored = {"k1": ("hash", 200, orjson.dumps({"version": 1})), "k2": ("other", 202, b"{}")}
    batch = [cmd("a", Deposit(amount=5), key="k1"), cmd("a", Deposit(amount=5), key="k2")]
    d = decide(batch, {("account", "a"): opened("ann", 0, 1)}, stored)
    replayed, reused = d.outcomes
    assert replayed == Replayed(200, {"version": 1})
    assert isinstance(reused, Refused) and reused.code == "idempotency_key_reused"
    assert (d.moved, d.records, d.idempotency) == ([], [], [])


async def test_a_repeated_key_in_one_batch_points_at_its_first_command() -> None:
    batch = [
        cmd("a", Deposit(amount=5), key="k"),
        cmd("a", Deposit(amount=5), key="k"),
        cmd("a", Deposit(amount=6), key="k", request_hash="different"),
    ]
    d = decide(batch, {("account", "a"): opened("ann", 0, 1)})
    first, repeat, reused = d.outcomes
    assert isinstance(first, Accepted) and repeat == 0
    assert isinstance(reused, Refused) and reused.code == "idempotency_key_reused"
    assert [r.version for r in d.records] == [2]
    # The provisional answer a repeat finds until Kafka acknowledges the event.
    assert d.idempotency == [IdempotencyWrite("k", "hash", 202, orjson.dumps(first.body(published=False)))]
    assert orjson.loads(d.idempotency[0].response)["published"] is False


async def test_a_key_whose_first_command_was_refused_is_free_for_the_next() -> None:
    batch = [cmd("a", Withdraw(amount=5), key="k"), cmd("a", Deposit(amount=5), key="k")]
    d = decide(batch, {("account", "a"): opened("ann", 0, 1)})
    refused, accepted = d.outcomes
    assert isinstance(refused, Refused) and refused.code == "insufficient_funds"
    assert isinstance(accepted, Accepted) and accepted.version == 2
    assert [r.key for r in d.idempotency] == ["k"]


async def test_the_trace_context_rides_in_a_header() -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    d = decide(
        [cmd("a", Deposit(amount=1), traceparent=trace), cmd("a", Deposit(amount=2))],
        {("account", "a"): opened("ann", 0, 1)},
    )
    traced, plain = (dict(r.headers) for r in d.records)
    assert traced["traceparent"] == trace.encode()
    assert "traceparent" not in plain
    assert (traced["version"], plain["version"]) == (b"2", b"3")


async def test_a_nul_an_aggregate_lets_through_is_escaped_in_every_row() -> None:
    # Commands refuse a NUL at the boundary; one built without validation shows
    # that the rows still carry none raw (PostgreSQL text cannot hold U+0000).
    d = decide([cmd("a", OpenAccount.model_construct(owner="a\x00b"))], {("account", "a"): NEW_ACCOUNT})
    (row,), (record,) = d.created, d.records
    assert "\x00" not in row.state and state_of(row)["owner"] == "a\x00b"
    assert b"\x00" not in record.value and decode_value(record.value).data["owner"] == "a\x00b"


async def test_an_unpaired_surrogate_fails_the_whole_decision() -> None:
    # Not encodable as UTF-8, so no row could hold it: the event cannot even be
    # built, and the error leaves the decision, so the store writes nothing.
    with pytest.raises(ValidationError, match="unicode"):
        decide(
            [cmd("a", OpenAccount(owner="ann")), cmd("b", OpenAccount.model_construct(owner="\ud800"))],
            {("account", "a"): NEW_ACCOUNT, ("account", "b"): NEW_ACCOUNT},
        )
