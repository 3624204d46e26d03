"""Pure parts of the read side: account handlers, the batch fold, decoding, cursors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from eventfold.projection import Projection
from eventfold.testing import envelope, project
from examples.bank.contracts import AccountClosed, AccountOpened, Deposited, Withdrawn
from examples.bank.projection import ACCOUNTS, opened
from examples.bank.tables import account_transactions
from projector.apply import next_offsets
from projector.batch import Decoded, Failure, contiguous, decode, fold
from query_api import cursor
from schemas.envelope import EventEnvelope
from schemas.mapper import encode_value

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def env(version: int, type_: str, data: dict[str, Any], sid: str = "a1", at: datetime = T0) -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid.uuid4(),
        stream_type="account",
        stream_id=sid,
        version=version,
        type=type_,
        occurred_at=at,
        data=data,
    )


def test_opened_starts_an_empty_open_account() -> None:
    view = project(ACCOUNTS, AccountOpened(owner="o"), stream_id="a1", occurred_at=T0)
    assert view.doc == {
        "id": "a1",
        "version": 1,
        "owner": "o",
        "balance": 0,
        "status": "open",
        "opened_at": T0,
        "updated_at": T0,
    }
    assert view.rows(account_transactions) == []


def ledger_row(
    version: int, kind: str, amount: int, after: int, at: datetime, reference: str
) -> dict[str, Any]:
    return {
        "account_id": "a1",
        "version": version,
        "type": kind,
        "amount": amount,
        "balance_after": after,
        "occurred_at": at,
        "reference": reference,
    }


def test_deposit_and_withdrawal_move_the_balance_and_append_a_ledger_row() -> None:
    opened_with_10 = project(
        ACCOUNTS, AccountOpened(owner="o"), Deposited(amount=10, reference=""), stream_id="a1", occurred_at=T0
    )
    later = T0 + timedelta(minutes=1)
    dep = opened_with_10.project(Deposited(amount=5, reference="r1"), stream_id="a1", occurred_at=later)
    assert dep.doc["balance"] == 15 and dep.doc["updated_at"] == later
    assert dep.rows(account_transactions) == [
        ledger_row(2, "deposit", 10, 10, T0, ""),
        ledger_row(3, "deposit", 5, 15, later, "r1"),
    ]
    wd = dep.project(Withdrawn(amount=15, reference=""), stream_id="a1", occurred_at=later)
    assert wd.doc["balance"] == 0
    assert wd.rows(account_transactions)[2:] == [ledger_row(4, "withdrawal", 15, 0, later, "")]
    assert wd.project(AccountClosed(), stream_id="a1").doc["status"] == "closed"


def test_timestamps_are_stored_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    view = project(ACCOUNTS, AccountOpened(owner="o"), stream_id="a1", occurred_at=T0.astimezone(cet))
    assert view.doc["opened_at"].utcoffset() == timedelta(0) and view.doc["opened_at"] == T0


def test_handlers_take_an_envelope_as_their_meta() -> None:
    # A handler called directly: `envelope` builds the meta the runtime would pass.
    meta = envelope(AccountOpened(owner="o"), stream_type=ACCOUNTS, stream_id="a1", occurred_at=T0)
    change = opened(None, meta, AccountOpened(owner="o"))
    assert change.doc == {"owner": "o", "balance": 0, "status": "open", "opened_at": T0, "updated_at": T0}
    assert change.appends == ()


def decoded(e: EventEnvelope, offset: int, partition: int = 0) -> Decoded:
    model = ACCOUNTS.contract.load_event(e.type, e.schema_version, e.data)
    return Decoded("t", partition, offset, e, model)


def test_fold_applies_in_order_skips_duplicates_and_reports_gaps() -> None:
    events = [
        env(1, "AccountOpened", {"owner": "o"}),
        env(2, "Deposited", {"amount": 7}),
        env(2, "Deposited", {"amount": 7}),  # a redelivered copy
        env(4, "Withdrawn", {"amount": 1}),  # version 3 is missing
        env(1, "AccountOpened", {"owner": "p"}, sid="b1"),
    ]
    out = fold(ACCOUNTS, {}, [decoded(e, i) for i, e in enumerate(events)])
    assert out.applied == 3 and out.duplicates == 1
    assert out.docs["a1"]["balance"] == 7 and out.docs["a1"]["version"] == 2
    assert out.docs["b1"]["owner"] == "p"
    assert [(f.reason, f.offset) for f in out.failures] == [("version_gap", 3)]
    assert not out.failures[0].dead_letter
    assert len(out.appends["account_transactions"]) == 1


def test_fold_starts_from_preloaded_documents_and_ignores_older_versions() -> None:
    stored = {
        "a1": {
            "id": "a1",
            "owner": "o",
            "balance": 100,
            "status": "open",
            "version": 5,
            "opened_at": T0,
            "updated_at": T0,
        }
    }
    out = fold(
        ACCOUNTS,
        stored,
        [decoded(env(5, "Deposited", {"amount": 1}), 0), decoded(env(6, "Deposited", {"amount": 1}), 1)],
    )
    assert out.docs["a1"]["balance"] == 101 and out.docs["a1"]["version"] == 6
    assert out.duplicates == 1


def test_a_failing_handler_turns_its_record_into_a_dead_letter() -> None:
    # A deposit to a stream that was never opened: the handler has no document.
    out = fold(ACCOUNTS, {}, [decoded(env(1, "Deposited", {"amount": 1}), 0)])
    assert out.applied == 0 and [f.reason for f in out.failures] == ["handler_error"]
    assert out.failures[0].dead_letter


@dataclass
class Rec:
    value: bytes | None
    offset: int = 0
    topic: str = "t"
    partition: int = 0
    key: bytes | None = b"k"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "not_json"),
        (b"\xff\x00", "not_json"),
        (b"[1, 2]", "invalid_envelope"),
        (orjson.dumps({"type": "Deposited"}), "invalid_envelope"),
        (encode_value(env(1, "AccountFrozen", {})), "unknown_type"),
        (encode_value(env(1, "Deposited", {"amount": "x"})), "invalid_data"),
        (
            encode_value(env(1, "Deposited", {"amount": 1}).model_copy(update={"stream_type": "x"})),
            "unknown_stream_type",
        ),
    ],
)
def test_decode_names_the_reason_a_record_is_poison(value: bytes | None, reason: str) -> None:
    got = decode(ACCOUNTS, Rec(value))
    assert isinstance(got, Failure) and got.reason == reason and got.value == value


def test_decode_reads_a_good_record() -> None:
    got = decode(ACCOUNTS, Rec(encode_value(env(2, "Deposited", {"amount": 3})), offset=9))
    # Version 1 records are upcast: they gain an empty reference.
    assert isinstance(got, Decoded) and got.event == Deposited(amount=3, reference="")
    assert got.offset == 9


def test_next_offsets_are_one_past_the_last_record_of_each_partition() -> None:
    items = [decoded(env(1, "AccountOpened", {"owner": "o"}), o, p) for p, o in [(0, 4), (0, 9), (2, 3)]]
    assert next_offsets(items) == {("t", 0): 10, ("t", 2): 4}


def test_a_projection_must_handle_every_event_type() -> None:
    with pytest.raises(ValueError, match="no handler"):
        Projection("partial", ACCOUNTS.contract, ACCOUNTS.doc_table, {"AccountOpened": opened})


def test_cursors_round_trip_and_refuse_tampering() -> None:
    token = cursor.encode("accounts", ["a-1"])
    assert cursor.decode("accounts", token, (str,)) == ["a-1"]
    for bad in ("", "!!", cursor.encode("tx:a", [3]), cursor.encode("accounts", [3])):
        with pytest.raises(cursor.InvalidCursor):
            cursor.decode("accounts", bad, (str,))


@dataclass
class Msg:
    offset: int


def test_contiguous_drops_records_already_applied_and_refuses_a_skip() -> None:
    batch = {"p0": [Msg(3), Msg(4), Msg(5)], "p1": [Msg(7)]}
    kept = contiguous(batch, {"p0": (4, False), "p1": (7, False)})
    assert [m.offset for m in kept or []] == [4, 5, 7]
    assert contiguous(batch, {"p0": (1, False)}) is None  # 1 and 2 were never handed over
    after_seek = contiguous(batch, {"p0": (1, True)})  # a fetch may start past a seek
    assert [m.offset for m in after_seek or []] == [3, 4, 5, 7]
