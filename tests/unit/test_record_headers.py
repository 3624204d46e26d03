"""The Kafka headers of an event record: envelope fields and CloudEvents attributes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from schemas.mapper import decode_value, encode_envelope

FIELDS = {
    "event_id": "0b7e4f1e-4c5a-4d1e-9b5e-0c1f2a3b4c5d",
    "stream_type": "account",
    "stream_id": "acct-ü-1",
    "version": 7,
    "type": "Deposited",
    "schema_version": 2,
    "correlation_id": "order-77",
    "causation_id": "cmd-1",
    "data": {"amount": 5, "reference": ""},
}


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 12, 1, 12, 30, 5, 123456, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 30, tzinfo=UTC),
        datetime(2026, 12, 1, 13, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_cloudevents_attributes_repeat_the_envelope(occurred_at: datetime) -> None:
    value, headers = encode_envelope(**FIELDS, occurred_at=occurred_at)
    h = dict(headers)
    assert len(h) == len(headers)  # no header twice
    env = decode_value(value)
    assert h["content-type"] == b"application/json"
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_id"] == h["event_id"] == str(env.event_id).encode()
    assert h["ce_type"] == b"account.Deposited"
    assert h["ce_source"] == b"eventfold/account"
    assert h["ce_subject"] == h["stream_id"] == env.stream_id.encode()
    # ce_time is the value's occurred_at, character for character, and RFC 3339.
    assert h["ce_time"].decode() == orjson.loads(value)["occurred_at"]
    assert datetime.fromisoformat(h["ce_time"].decode()) == occurred_at == env.occurred_at


def test_envelope_headers_are_kept_beside_them() -> None:
    value, headers = encode_envelope(**FIELDS, occurred_at=datetime.now(UTC))
    env = decode_value(value)
    h = dict(headers)
    for name in ("event_id", "stream_type", "stream_id", "version", "type", "schema_version"):
        assert h[name] == str(getattr(env, name)).encode(), name
    assert (h["correlation_id"], h["causation_id"]) == (b"order-77", b"cmd-1")
    _, bare = encode_envelope(
        **{**FIELDS, "correlation_id": None, "causation_id": None}, occurred_at=env.occurred_at
    )
    assert {"correlation_id", "causation_id"}.isdisjoint(dict(bare))


def test_per_type_headers_follow_the_type() -> None:
    occurred = datetime.now(UTC)
    _, first = encode_envelope(**FIELDS, occurred_at=occurred)
    _, other = encode_envelope(
        **{**FIELDS, "stream_type": "counter", "type": "Incremented"}, occurred_at=occurred
    )
    assert dict(first)["ce_type"] == b"account.Deposited"
    assert dict(other)["ce_type"] == b"counter.Incremented"
    assert dict(other)["ce_source"] == b"eventfold/counter"
    assert (dict(other)["type"], dict(other)["stream_type"]) == (b"Incremented", b"counter")
