"""Registry, envelope mapping and position tokens."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from examples.bank.contracts import ACCOUNT, Deposited
from schemas.envelope import EventEnvelope
from schemas.mapper import PoisonRecord, decode_value, encode_value, envelope_headers
from schemas.position import InvalidPosition, Position
from schemas.registry import Registry, UnknownCommandType, UnknownEventType, UnknownStreamType
from tests.support.bank import default_aggregates
from tests.support.counter import COUNTER, with_counter


def envelope(**over: object) -> EventEnvelope:
    fields: dict[str, object] = {
        "event_id": uuid.uuid4(),
        "stream_type": "account",
        "stream_id": "a-1",
        "version": 2,
        "type": "Deposited",
        "occurred_at": datetime.now(UTC),
        "correlation_id": "c",
        "causation_id": "k",
        "data": {"amount": 5},
    }
    fields.update(over)
    return EventEnvelope.model_validate(fields)


def test_envelope_round_trips_through_json() -> None:
    env = envelope()
    assert decode_value(encode_value(env)) == env


def test_headers_carry_identifying_fields() -> None:
    headers = dict(envelope_headers(envelope(version=7)))
    assert headers["version"] == b"7"
    assert headers["stream_id"] == b"a-1"
    assert headers["type"] == b"Deposited"
    assert set(headers) >= {"event_id", "stream_type", "schema_version", "correlation_id", "causation_id"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not_json"),
        (b"[1,2]", "invalid_envelope"),
        (b'{"type": "X"}', "invalid_envelope"),
        (None, "not_json"),
    ],
)
def test_poison_values_are_classified(value: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonRecord) as err:
        decode_value(value)
    assert err.value.reason == reason


def test_registry_lookups() -> None:
    reg = Registry([ACCOUNT, COUNTER])
    assert reg.stream("counter") is COUNTER
    assert reg.stream_types == ["account", "counter"]
    with pytest.raises(UnknownStreamType):
        reg.stream("nope")
    with pytest.raises(UnknownCommandType):
        ACCOUNT.command_model("Explode")
    with pytest.raises(UnknownEventType):
        ACCOUNT.event_model("Exploded")
    assert ACCOUNT.load_event("Deposited", 1, {"amount": 3}) == Deposited(amount=3, reference="")


def test_registry_refuses_duplicate_stream_types() -> None:
    with pytest.raises(ValueError):
        Registry([ACCOUNT, ACCOUNT])


def test_aggregates_build_their_registry() -> None:
    assert default_aggregates().registry.stream_types == ["account", "transfer"]
    assert with_counter().registry.stream_types == ["account", "counter"]


def test_position_token_round_trip() -> None:
    pos = Position("eventfold.account.events", 3, 123456)
    assert Position.parse(pos.token()) == pos


@pytest.mark.parametrize("token", ["", "nope!", "W10", "WyJ0IiwtMSwwXQ", "x" * 600])
def test_invalid_position_tokens(token: str) -> None:
    with pytest.raises(InvalidPosition):
        Position.parse(token)


def test_fast_encoder_agrees_with_the_envelope_model() -> None:
    from schemas.mapper import encode_envelope

    env = envelope(correlation_id="c-1", causation_id=None)
    value, headers = encode_envelope(
        event_id=str(env.event_id),
        stream_type=env.stream_type,
        stream_id=env.stream_id,
        version=env.version,
        type=env.type,
        schema_version=env.schema_version,
        occurred_at=env.occurred_at,
        correlation_id=env.correlation_id,
        causation_id=env.causation_id,
        data=env.data,
    )
    assert decode_value(value) == env
    assert headers == envelope_headers(env)


def test_new_ids_are_version_4_uuids() -> None:
    from eventfold.jsonutil import new_id

    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        u = uuid.UUID(i)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, i)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    from eventfold.jsonutil import new_id

    new_id()  # ids are drawn ahead in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child != new_id()


def _record(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "stream_type": "account",
        "stream_id": "acc-1",
        "version": 3,
        "type": "Deposited",
        "schema_version": 2,
        "occurred_at": "2026-11-23T10:00:00+01:00",
        "correlation_id": "c-1",
        "causation_id": None,
        "data": {"amount": 5, "reference": "r-9"},
    }
    fields.update(changes)
    return orjson.dumps(fields)


def test_one_pass_read_agrees_with_the_general_way() -> None:
    from schemas.mapper import decode_event, read_current

    value = _record()
    fast = read_current(ACCOUNT, value)
    assert fast is not None
    env = decode_value(value)
    assert fast.model_dump(exclude={"data"}) == env.model_dump(exclude={"data"})
    assert fast.data == Deposited(amount=5, reference="r-9")
    assert decode_event(ACCOUNT, value) == (fast, fast.data)


@pytest.mark.parametrize(
    "changes",
    [
        {"schema_version": 1, "data": {"amount": 5}},  # older shape: upcast the general way
        {"data": {"amount": "lots", "reference": ""}},
        {"type": "Teleported"},
        {"schema_version": 3},
        {"extra": 1},
        {"version": 0},
    ],
)
def test_one_pass_read_leaves_anything_else_to_the_general_way(changes: dict[str, object]) -> None:
    from schemas.mapper import decode_event, read_current

    value = _record(**changes)
    assert read_current(ACCOUNT, value) is None
    if changes.get("schema_version") == 1:
        env, event = decode_event(ACCOUNT, value)
        assert (env.schema_version, event) == (1, Deposited(amount=5, reference=""))
    else:
        with pytest.raises((PoisonRecord, LookupError, ValueError)):
            decode_event(ACCOUNT, value)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"owner": "a\x00b"}, ("owner",)),
        ({"owner": "\ud800"}, ("owner",)),
        ({"owner": "ok", "tags": {"k": ["fine", "\udfff"]}}, ("tags", "k", 1)),
        ({"owner": "ok", "k\x00": 1}, ("k\\x00",)),
    ],
)
def test_commands_refuse_strings_no_store_can_hold(
    data: dict[str, object], where: tuple[object, ...]
) -> None:
    from pydantic import ValidationError

    from examples.bank.contracts import OpenAccount
    from schemas.base import UNSTORABLE, unstorable

    found = unstorable(data)
    assert found is not None and found[0] == where
    with pytest.raises(ValidationError) as raised:
        OpenAccount.model_validate(data)
    assert [e["type"] for e in raised.value.errors()] == [UNSTORABLE]


def test_commands_take_any_other_unicode() -> None:
    from examples.bank.contracts import OpenAccount
    from schemas.base import unstorable

    owner = "Zoë 😀 \u200b \t \\u0000"
    assert unstorable({"owner": owner}) is None
    assert OpenAccount(owner=owner).owner == owner
