"""Pure batch logic: classify records, then fold events into documents.

Nothing here does I/O. The runtime and the replay both feed Kafka records
through `decode` and `fold`, so live consumption and a rebuild cannot differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from eventfold.projection import Doc, Projection
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from schemas.mapper import PoisonRecord, decode_value, read_current
from schemas.registry import MissingUpcaster, StreamContract, UnknownEventType


class RecordLike(Protocol):
    """The parts of an aiokafka ConsumerRecord we use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Decoded:
    topic: str
    partition: int
    offset: int
    envelope: EnvelopeMeta
    event: Event
    raw: RecordLike | None = None  # kept for the DLQ if a handler fails on it


@dataclass(frozen=True, slots=True)
class Failure:
    """A record the projection could not apply: poison, or a version gap."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def dead_letter(self) -> bool:
        """Poison goes to the DLQ; a gap is a fact about the stream, not the record."""
        return self.reason != "version_gap"


@dataclass
class Folded:
    docs: dict[str, Doc] = field(default_factory=dict)
    appends: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    last_event_at: datetime | None = None
    # Per document changed: the (topic, partition, offset) of the last event applied to it.
    positions: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def _poison(record: RecordLike, reason: str, detail: str) -> Failure:
    return Failure(
        record.topic,
        record.partition,
        record.offset,
        reason,
        detail[:1000],
        record.key,
        record.value,
        tuple(record.headers or ()),
    )


def failed(item: Decoded, reason: str, detail: str) -> Failure:
    """A decoded event that could not be applied, with its record kept for the DLQ and re-drive."""
    raw = item.raw
    return Failure(
        item.topic,
        item.partition,
        item.offset,
        reason,
        detail[:1000],
        raw.key if raw else item.envelope.stream_id.encode(),
        raw.value if raw else None,
        tuple(raw.headers or ()) if raw else (),
    )


def decode(projection: Projection, record: RecordLike) -> Decoded | Failure:
    """Read one record as an event of the projection's stream type, or say why not."""
    return decode_as(projection.contract, record)


def decode_as(contract: StreamContract, record: RecordLike) -> Decoded | Failure:
    """Read one record as an event of `contract`'s stream type, or say why not."""
    fast = read_current(contract, record.value)
    if fast is not None and fast.stream_type == contract.stream_type:
        return Decoded(record.topic, record.partition, record.offset, fast, fast.data, record)
    try:
        env = decode_value(record.value)
    except PoisonRecord as exc:
        return _poison(record, exc.reason, exc.detail)
    if env.stream_type != contract.stream_type:
        return _poison(
            record, "unknown_stream_type", f"{env.stream_type!r} on a {contract.stream_type} topic"
        )
    try:
        event = contract.load_event(env.type, env.schema_version, env.data)
    except (UnknownEventType, MissingUpcaster) as exc:
        return _poison(record, "unknown_type", f"{env.type} v{env.schema_version}: {exc}")
    except ValidationError as exc:
        err = exc.errors()[0]
        return _poison(record, "invalid_data", f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
    return Decoded(record.topic, record.partition, record.offset, env, event, record)


def contiguous(
    batch: Mapping[Any, Sequence[Any]], expected: Mapping[Any, tuple[int, bool]]
) -> list[Any] | None:
    """The records of a fetched batch that continue each partition where we left off.

    `expected` maps a partition to the offset its next record must have and
    whether a seek set it. Records before that offset were applied already
    (a fetch that raced a seek can hand them over again) and are dropped. A
    jump past it, other than right after a seek (where a fetch may start
    later, e.g. over a transaction marker), means records were never handed
    over: None tells the caller to seek back to the stored offsets.
    """
    out: list[Any] = []
    for tp, msgs in batch.items():
        want, after_seek = expected.get(tp, (None, True))
        fresh = [m for m in msgs if want is None or m.offset >= want]
        if fresh and want is not None and fresh[0].offset > want and not after_seek:
            return None
        out.extend(fresh)
    return out


def stream_ids(items: Iterable[Decoded | Failure]) -> list[str]:
    return sorted({i.envelope.stream_id for i in items if isinstance(i, Decoded)})


def fold(projection: Projection, docs: Mapping[str, Doc], items: Iterable[Decoded | Failure]) -> Folded:
    """Apply a batch in order to preloaded documents, with the version guard.

    An event at or below a document's version is a duplicate and does nothing;
    one past the next version is a gap, reported and not applied. A handler
    that raises marks its record as poison instead of stopping the projection.
    """
    out = Folded()
    current = dict(docs)
    for item in items:
        if isinstance(item, Failure):
            out.failures.append(item)
            continue
        env = item.envelope
        doc = current.get(env.stream_id)
        have = int(doc["version"]) if doc else 0
        if env.version <= have:
            out.duplicates += 1
            continue
        if env.version != have + 1:
            # The record is kept so `eventfold dlq retry` can apply it once
            # the poison record that blocks its stream has been re-driven.
            detail = f"{env.stream_id}: got version {env.version}, expected {have + 1}"
            out.failures.append(failed(item, "version_gap", detail))
            continue
        try:
            change = projection.handlers[env.type](doc, env, item.event)
        except Exception as exc:
            out.failures.append(failed(item, "handler_error", f"{type(exc).__name__}: {exc}"))
            continue
        new = {**change.doc, "id": env.stream_id, "version": env.version}
        current[env.stream_id] = out.docs[env.stream_id] = new
        out.positions[env.stream_id] = (item.topic, item.partition, item.offset)
        for table, row in change.appends:
            out.appends.setdefault(table.name, []).append(row)
        out.applied += 1
        if out.last_event_at is None or env.occurred_at > out.last_event_at:
            out.last_event_at = env.occurred_at
    return out
