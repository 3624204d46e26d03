"""Serialisation of envelopes to Kafka records and back, in one place."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.base import Event
from schemas.envelope import EnvelopeMeta, EventEnvelope, TypedEnvelope
from schemas.registry import StreamContract

Headers = list[tuple[str, bytes]]


class PoisonRecord(ValueError):
    """A record that cannot be read as an event; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# CloudEvents 1.0 in binary content mode (its Kafka protocol binding): the
# record value is the event's data (the envelope, JSON) and its attributes
# travel as `ce_*` headers, so CloudEvents SDKs read our records as they are.
CONTENT_TYPE = ("content-type", b"application/json")
CE_SPECVERSION = ("ce_specversion", b"1.0")


def cloudevents_type(stream_type: str, type: str) -> str:
    return f"{stream_type}.{type}"


def cloudevents_source(stream_type: str) -> str:
    return f"eventfold/{stream_type}"


@lru_cache(maxsize=1024)
def _per_type(stream_type: str, type: str) -> tuple[tuple[str, bytes], ...]:
    """The headers fixed by an event's stream type and type, encoded once."""
    return (
        ("stream_type", stream_type.encode()),
        ("type", type.encode()),
        ("ce_type", cloudevents_type(stream_type, type).encode()),
        ("ce_source", cloudevents_source(stream_type).encode()),
    )


def envelope_headers(env: EnvelopeMeta) -> Headers:
    """The headers `encode_envelope` gives this envelope's record."""
    return encode_envelope(
        event_id=str(env.event_id),
        stream_type=env.stream_type,
        stream_id=env.stream_id,
        version=env.version,
        type=env.type,
        schema_version=env.schema_version,
        occurred_at=env.occurred_at,
        correlation_id=env.correlation_id,
        causation_id=env.causation_id,
        data={},
    )[1]


def encode_value(env: EventEnvelope) -> bytes:
    return orjson.dumps(env.model_dump(mode="json"))


def encode_envelope(
    *,
    event_id: str,
    stream_type: str,
    stream_id: str,
    version: int,
    type: str,
    schema_version: int,
    occurred_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    data: dict[str, Any],
) -> tuple[bytes, Headers]:
    """The record value and headers of a new event, without a model round trip.

    This is the write path's hot loop; `decode_value` validates the same JSON
    against `EventEnvelope`, and a unit test holds the two together.
    """
    value = orjson.dumps(
        {
            "event_id": event_id,
            "stream_type": stream_type,
            "stream_id": stream_id,
            "version": version,
            "type": type,
            "schema_version": schema_version,
            "occurred_at": occurred_at,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "data": data,
        }
    )
    # Envelope fields first, then the CloudEvents attributes; what depends only
    # on the event type is encoded once per type, the rest reuses shared bytes.
    eid, sid = event_id.encode(), stream_id.encode()
    st, kind, ce_type, ce_source = _per_type(stream_type, type)
    headers: Headers = [
        ("event_id", eid),
        st,
        ("stream_id", sid),
        ("version", str(version).encode()),
        kind,
        ("schema_version", str(schema_version).encode()),
    ]
    if correlation_id is not None:
        headers.append(("correlation_id", correlation_id.encode()))
    if causation_id is not None:
        headers.append(("causation_id", causation_id.encode()))
    headers += (
        CONTENT_TYPE,
        CE_SPECVERSION,
        ("ce_id", eid),
        ce_type,
        ce_source,
        ("ce_subject", sid),
        # The same RFC 3339 text as the value's occurred_at: both are orjson's.
        ("ce_time", orjson.dumps(occurred_at)[1:-1]),
    )
    return value, headers


def decode_value(value: bytes | None) -> EventEnvelope:
    if value is None:
        raise PoisonRecord("not_json", "record has no value")
    try:
        raw: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord("not_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise PoisonRecord("invalid_envelope", "record value is not a JSON object")
    try:
        return EventEnvelope.model_validate(raw)
    except ValidationError as exc:
        raise PoisonRecord("invalid_envelope", _first_error(exc)) from None


def read_current(contract: StreamContract, value: bytes | None) -> TypedEnvelope | None:
    """A record of one of the contract's events at its current version, read in one pass.

    None means "take the general way" (`decode_value`, then `load_event`):
    an older schema version to upcast, or input that is wrong somehow, which
    the general way then names precisely.
    """
    if value is None:
        return None
    try:
        return contract.current_records.validate_json(value)
    except ValidationError:
        return None


def decode_event(contract: StreamContract, value: bytes | None) -> tuple[EnvelopeMeta, Event]:
    """A record as its envelope and its event, upcast to the current schema version.

    Raises PoisonRecord (not an envelope), UnknownEventType or MissingUpcaster
    (a type or version this code cannot read), or ValidationError (bad data).
    """
    fast = read_current(contract, value)
    if fast is not None:
        return fast, fast.data
    env = decode_value(value)
    return env, contract.load_event(env.type, env.schema_version, env.data)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}"[:500]
