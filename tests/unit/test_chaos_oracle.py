"""The chaos oracle's transfer and mail checks catch what they are there to catch."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from chaos.oracle import (
    Saga,
    Verdict,
    check_decided_once,
    check_transfers,
    check_welcome_emails,
    overlap,
    welcome_key,
)
from chaos.topic import TopicRecord
from schemas.envelope import EventEnvelope

T0 = datetime(2026, 12, 2, tzinfo=UTC)


def rec(
    stream_type: str,
    sid: str,
    version: int,
    type_: str,
    data: dict[str, Any],
    *,
    cause: str = "",
    at: float = 0,
) -> TopicRecord:
    env = EventEnvelope(
        event_id=uuid.uuid4(),
        stream_type=stream_type,
        stream_id=sid,
        version=version,
        type=type_,
        occurred_at=T0 + timedelta(seconds=at),
        causation_id=cause or str(uuid.uuid4()),
        data=data,
    )
    return TopicRecord(0, 0, env)


def transfer(outcome: str, *, ended_at: float = 5) -> list[TopicRecord]:
    req = {"source": "a", "target": "b", "amount": 10}
    end = {"completed": "TransferCompleted", "failed": "TransferFailed", "compensated": "TransferCompensated"}
    out = [rec("transfer", "t1", 1, "TransferRequested", req)]
    if outcome != "failed":
        out.append(rec("account", "a", 2, "Withdrawn", {"amount": 10, "reference": "t1"}))
    if outcome == "completed":
        out.append(rec("account", "b", 2, "Deposited", {"amount": 10, "reference": "t1"}))
    if outcome == "compensated":
        out.append(rec("account", "a", 3, "Deposited", {"amount": 10, "reference": "t1"}))
    extra = {} if outcome == "completed" else {"reason": "r"}
    return [*out, rec("transfer", "t1", 2, end[outcome], extra, at=ended_at)]


def saga(status: str = "completed", mails: Counter[str] | None = None) -> Saga:
    return Saga(["t1"], {"t1": status}, {}, mails or Counter(), deadline_s=10, bound_s=60)


def test_a_transfer_that_moved_its_money_as_its_outcome_says_passes() -> None:
    for outcome in ("completed", "failed", "compensated"):
        v = Verdict()
        check_transfers(transfer(outcome), saga(outcome), v)
        assert v.total == 0, (outcome, v.violations)
        assert v.transfers == {outcome: 1}


def test_a_withdrawal_made_twice_is_caught() -> None:
    records = transfer("completed")
    records.insert(2, rec("account", "a", 3, "Withdrawn", {"amount": 10, "reference": "t1"}))
    v = Verdict()
    check_transfers(records, saga(), v)
    assert v.counts["transfer_moved_money_once"] == 1


def test_a_transfer_that_never_ended_or_ended_late_is_caught() -> None:
    v = Verdict()
    check_transfers(transfer("completed")[:-1], saga(), v)
    assert v.counts["transfer_ended_in_time"] == 1
    v = Verdict()
    check_transfers(transfer("completed", ended_at=71), saga(), v)
    assert v.counts["transfer_ended_in_time"] == 1


def test_outages_do_not_count_against_a_transfer_but_its_own_slowness_does() -> None:
    t0 = T0.timestamp()
    # 71 s, 30 of them with the broker down (two overlapping faults and one outside): in time.
    outages = [(t0 + 10, t0 + 30), (t0 + 20, t0 + 40), (t0 + 100, t0 + 200)]
    v = Verdict()
    check_transfers(transfer("completed", ended_at=71), replace(saga(), outages=outages), v)
    assert v.total == 0, v.violations
    # 101 s with the same 30 s down: 71 s of its own, over the 70 s limit.
    v = Verdict()
    check_transfers(transfer("completed", ended_at=101), replace(saga(), outages=outages[:2]), v)
    assert v.counts["transfer_ended_in_time"] == 1
    assert overlap(outages, t0, t0 + 150) == 80


def test_a_read_model_that_disagrees_with_the_topic_is_caught() -> None:
    v = Verdict()
    check_transfers(transfer("completed"), saga("compensated"), v)
    assert v.counts["transfers_read_model"] == 1


def test_one_command_decided_twice_is_caught() -> None:
    once = [rec("account", "a", 1, "Deposited", {"amount": 1}, cause="c1")]
    v = Verdict()
    check_decided_once(once, v)
    assert v.total == 0
    twice = [*once, rec("account", "a", 3, "Deposited", {"amount": 1}, cause="c1")]
    check_decided_once(twice, v)
    assert v.counts["command_decided_once"] == 1


def test_an_account_without_a_welcome_mail_is_caught_and_repeats_are_counted() -> None:
    opened = [rec("account", f"acc-{i}", 1, "AccountOpened", {"owner": "o"}) for i in range(3)]
    keys = [welcome_key(r.envelope.event_id) for r in opened]
    v = Verdict()
    check_welcome_emails(opened, saga(mails=Counter({keys[0]: 2, keys[1]: 1})), v)
    assert v.counts["welcome_email_sent"] == 1
    assert v.emails["duplicates"] == 1 and v.emails["distinct"] == 2 and v.emails["owed"] == 3
