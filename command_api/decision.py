"""How a batch of commands becomes events: pure, no I/O.

The write store loads the heads of the batch's streams and the stored answers
of its idempotency keys, calls `decide_batch`, and writes what it returns as
it is. Commands are decided in batch order, each against its stream as the
earlier commands of the batch left it; a refused or conflicting command leaves
its stream as it found it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from command_api.outcomes import (
    Accepted,
    OutboxRecord,
    Outcome,
    PendingCommand,
    Refused,
    Replayed,
    VersionConflict,
)
from eventfold import jsonutil
from eventfold.aggregate import Aggregates, Rejected
from schemas.mapper import encode_envelope

StreamKey = tuple[str, str]
# An idempotency key's stored answer: request hash, HTTP status, response body.
StoredAnswer = tuple[str, int, bytes]


@dataclass(frozen=True, slots=True)
class Head:
    """A stream as loaded: its version, its folded state, and whether its row exists."""

    version: int
    state: Any
    exists: bool


@dataclass(frozen=True, slots=True)
class HeadWrite:
    """A stream's new head; `expected` is the version it was loaded at (0 for a new row)."""

    stream_type: str
    stream_id: str
    version: int
    state: str
    expected: int


@dataclass(frozen=True, slots=True)
class IdempotencyWrite:
    key: str
    request_hash: str
    status: int
    response: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """Each command's outcome, in batch order, and the rows that make them durable.

    An int outcome points at an earlier command with the same idempotency key,
    whose outcome it shares.
    """

    outcomes: list[Outcome | int]
    created: list[HeadWrite]  # rows to insert: streams that did not exist
    moved: list[HeadWrite]  # rows to move from `expected` (compare-and-set)
    records: list[OutboxRecord]  # outbox rows, in append order
    idempotency: list[IdempotencyWrite]


def decide_batch(
    batch: Sequence[PendingCommand],
    heads: Mapping[StreamKey, Head],
    stored: Mapping[str, StoredAnswer],
    aggregates: Aggregates,
    topic: Callable[[str], str],
    occurred: datetime,
    new_id: Callable[[], str] = jsonutil.new_id,
) -> Decision:
    """Decide `batch` against `heads`, which must hold every stream it names.

    New heads come out in the order of `heads`: the store passes them in key
    order, so that concurrent writers of the same streams lock them alike.
    """
    outcomes: list[Outcome | int] = []
    records: list[OutboxRecord] = []
    idempotency: list[IdempotencyWrite] = []
    first_with_key: dict[str, int] = {}
    # The streams accepted commands moved, as this batch leaves them so far.
    current: dict[StreamKey, Head] = {}
    for index, cmd in enumerate(batch):
        key = cmd.idempotency_key
        if key is not None:
            if key in stored:
                h, status, resp = stored[key]
                outcomes.append(
                    Replayed(status, jsonutil.loads(resp)) if h == cmd.request_hash else _key_reused()
                )
                continue
            if key in first_with_key:
                first = first_with_key[key]
                same = batch[first].request_hash == cmd.request_hash
                outcomes.append(first if same else _key_reused())
                continue
        stream = (cmd.stream_type, cmd.stream_id)
        head = current.get(stream) or heads[stream]
        if cmd.expected_version is not None and cmd.expected_version != head.version:
            outcomes.append(VersionConflict(head.version))
            continue
        aggregate = aggregates.get(cmd.stream_type)
        try:
            events = aggregate.decide(head.state, cmd.command)
        except Rejected as r:
            outcomes.append(Refused(r.code, r.detail))
            continue
        state, version = head.state, head.version
        described = []
        event_topic = topic(cmd.stream_type)
        for event in events:
            state = aggregate.evolve(state, event)
            version += 1
            event_id = new_id()
            name = type(event).__name__
            value, headers = encode_envelope(
                event_id=event_id,
                stream_type=cmd.stream_type,
                stream_id=cmd.stream_id,
                version=version,
                type=name,
                schema_version=type(event).schema_version,
                occurred_at=occurred,
                correlation_id=cmd.correlation_id,
                causation_id=cmd.command_id,
                data=event.model_dump(mode="json"),
            )
            described.append({"event_id": event_id, "type": name, "version": version})
            records.append(
                OutboxRecord(
                    cmd.stream_type,
                    cmd.stream_id,
                    version,
                    event_topic,
                    value,
                    _with_trace(headers, cmd.traceparent),
                )
            )
        current[stream] = Head(version, state, True)
        accepted = Accepted(
            cmd.stream_type,
            cmd.stream_id,
            version,
            described,
            records[len(records) - len(described) :],
        )
        outcomes.append(accepted)
        if key is not None:
            first_with_key[key] = index
            idempotency.append(
                IdempotencyWrite(
                    key,
                    cmd.request_hash,
                    # Durable but not yet acknowledged by Kafka; the publisher
                    # replaces this with the 200 and its position.
                    202,
                    jsonutil.dumps(accepted.body(published=False)),
                )
            )
    created: list[HeadWrite] = []
    moved: list[HeadWrite] = []
    for stream, loaded in heads.items():
        after = current.get(stream)
        if after is None or after.version == loaded.version:
            continue
        state_text = jsonutil.dumps(after.state.model_dump(mode="json")).decode()
        row = HeadWrite(stream[0], stream[1], after.version, state_text, loaded.version)
        (moved if loaded.exists else created).append(row)
    return Decision(outcomes, created, moved, records, idempotency)


def _with_trace(headers: list[tuple[str, bytes]], traceparent: str | None) -> list[tuple[str, bytes]]:
    """W3C trace context rides in a Kafka header, next to the envelope's ids."""
    return [*headers, ("traceparent", traceparent.encode())] if traceparent else headers


def _key_reused() -> Refused:
    return Refused(
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    )
