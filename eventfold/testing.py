"""Test a domain in memory: no broker, no database.

Deciders, given the events so far, when a command:

    given(ACCOUNT_AGGREGATE, AccountOpened(owner="a")).when(Withdraw(amount=5)).rejects("insufficient_funds")
    given(ACCOUNT_AGGREGATE, AccountOpened(owner="a"), Deposited(amount=9, reference="")).when(
        Withdraw(amount=5)
    ).then(Withdrawn(amount=5, reference=""))

Projections, events in, rows out:

    view = project(ACCOUNTS, AccountOpened(owner="a"), Deposited(amount=5, reference="r"), stream_id="a-1")
    view.doc["balance"], view.rows(account_transactions)

Process managers, events in, commands out (`process`, below).

All follow the runtime rather than a model of it. A command is decided on the
state as the write store reloads it (its JSON snapshot), and must be one of
the contract's commands; its events must be the contract's events. Events are
encoded as the command API encodes them and decoded and folded by the
projector's own `decode` and `fold`, one event per batch, each written the way
the read store writes rows. What the runtime would dead-letter, or store
other than the handler meant, fails with `ProjectionFailed`. Every other
expectation that does not hold is an `AssertionError` saying what was expected
and what happened, so any test runner reports it.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy import Column, DefaultClause, Index, String, Table, UniqueConstraint

from eventfold import jsonutil
from eventfold.aggregate import Aggregate, Rejected
from eventfold.process import Dispatch, ProcessManager, Refusal, Step
from eventfold.projection import Change, Doc, Handler, Projection
from projector.batch import Decoded, Folded, decode, fold
from schemas.base import Command, Event
from schemas.envelope import EnvelopeMeta, EventEnvelope
from schemas.mapper import decode_value, encode_envelope
from schemas.registry import StreamContract

S = TypeVar("S", bound=BaseModel)
P = TypeVar("P", bound=BaseModel)

# When an event happened, unless a test says otherwise: fixed, so rows are comparable.
OCCURRED_AT = datetime(2026, 1, 1, tzinfo=UTC)
_IDS = uuid.UUID("5f0c5bd6-6a4e-4c43-9a51-0f6d1f2e7b10")


class HasStreamType(Protocol):
    @property
    def stream_type(self) -> str: ...


def event_id_at(stream_type: str, stream_id: str, version: int) -> uuid.UUID:
    """The id a test event at this position gets: the same on every run, unique per position."""
    return uuid.uuid5(_IDS, f"{stream_type}/{stream_id}/{version}")


def envelope(
    event: Event,
    *,
    stream_type: str | HasStreamType,
    stream_id: str,
    version: int = 1,
    occurred_at: datetime = OCCURRED_AT,
    event_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> EventEnvelope:
    """The envelope the runtime would deliver `event` in: what a handler reads as its meta.

    `stream_type` is a name or anything declaring one (a contract, an
    aggregate, a projection). The event id defaults to `event_id_at(...)`.
    """
    kind = stream_type if isinstance(stream_type, str) else stream_type.stream_type
    return EventEnvelope(
        event_id=event_id or event_id_at(kind, stream_id, version),
        stream_type=kind,
        stream_id=stream_id,
        version=version,
        type=type(event).__name__,
        schema_version=type(event).schema_version,
        occurred_at=occurred_at,
        correlation_id=correlation_id,
        causation_id=causation_id,
        data=event.model_dump(mode="json"),
    )


# Deciders


def given(aggregate: Aggregate[S], *events: Event) -> Given[S]:
    """A stream of `aggregate` that already holds `events`."""
    _declared_events(aggregate.contract, events, "given")
    return Given(aggregate, tuple(events))


@dataclass(frozen=True)
class Given(Generic[S]):
    aggregate: Aggregate[S]
    history: tuple[Event, ...]

    @property
    def state(self) -> S:
        """The history folded with `evolve`."""
        return self.aggregate.fold(self.history)

    def when(self, command: Command) -> Outcome[S]:
        """Decide `command`; a `Rejected` is kept for `rejects`, any other error propagates."""
        contract = self.aggregate.contract
        name = type(command).__name__
        if contract.commands.get(name) is not type(command):
            raise AssertionError(f"{name} is not a command of the {contract.stream_type!r} contract")
        state = self._stored_state()
        try:
            events = list(self.aggregate.decide(state, command))
        except Rejected as rejected:
            return Outcome(self.aggregate, self.history, command, state, None, rejected)
        _declared_events(contract, events, f"decide({name})")
        return Outcome(self.aggregate, self.history, command, state, events, None)

    def _stored_state(self) -> S:
        """The state as the write store hands it to `decide`: reloaded from its JSON snapshot."""
        state = self.state
        if not self.history:
            return state
        reloaded = self.aggregate.load_state(jsonutil.loads(jsonutil.dumps(state.model_dump(mode="json"))))
        if reloaded != state:
            raise AssertionError(
                f"the state does not survive the write store's snapshot:\n"
                f"  folded:   {state!r}\n  reloaded: {reloaded!r}"
            )
        return reloaded


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """What `decide` made of one command: its events, or its rejection."""

    aggregate: Aggregate[S]
    history: tuple[Event, ...]
    command: Command
    before: S
    decided: list[Event] | None
    rejection: Rejected | None

    @property
    def events(self) -> list[Event]:
        """The events decided; an `AssertionError` if the command was rejected."""
        if self.decided is None:
            raise AssertionError(f"expected {self._what()} to be accepted, but {self._rejected()}")
        return list(self.decided)

    @property
    def state(self) -> S:
        """The state after the decided events."""
        return self.aggregate.fold(self.events, self.before)

    def then(self, *expected: Event) -> Outcome[S]:
        """Assert the command was accepted with exactly `expected`, in order (none: no events)."""
        if self.decided is None:
            raise AssertionError(
                f"expected {self._what()} to be accepted with\n{_listing(expected)}\nbut {self._rejected()}"
            )
        if list(expected) != self.decided:
            raise AssertionError(
                f"{self._what()}: wrong events\nexpected:\n{_listing(expected)}\n"
                f"got:\n{_listing(self.decided)}\n{_difference(expected, self.decided)}"
            )
        return self

    def rejects(self, code: str, match: str | None = None) -> Rejected:
        """Assert the command was rejected with `code` (and a detail `match` finds, a regex)."""
        r = self.rejection
        if r is None:
            raise AssertionError(
                f"expected rejection {code!r} but {self._what()} was accepted with\n"
                f"{_listing(self.decided or [])}"
            )
        if r.code != code:
            raise AssertionError(f"expected rejection {code!r} of {self._what()}, but {self._rejected()}")
        if match is not None and not re.search(match, r.detail):
            raise AssertionError(
                f"rejection {code!r} of {self._what()}: detail {r.detail!r} does not match {match!r}"
            )
        return r

    def when(self, command: Command) -> Outcome[S]:
        """The next command, on the stream with this outcome's events appended."""
        return Given(self.aggregate, (*self.history, *self.events)).when(command)

    def _what(self) -> str:
        return f"{self.command!r} on {self.before!r}"

    def _rejected(self) -> str:
        assert self.rejection is not None
        return f"it was rejected with {self.rejection.code!r}: {self.rejection.detail}"


def _declared_events(contract: StreamContract, events: Sequence[Event], where: str) -> None:
    for e in events:
        name = type(e).__name__
        if contract.events.get(name) is not type(e):
            raise AssertionError(
                f"{where}: {name} is not an event of the {contract.stream_type!r} contract "
                f"(the projector would dead-letter it as unknown_type)"
            )


def _listing(events: Sequence[Event]) -> str:
    return "\n".join(f"  {e!r}" for e in events) or "  (no events)"


def _difference(expected: Sequence[Event], got: Sequence[Event]) -> str:
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want == have:
            continue
        if type(want) is not type(have):
            return f"event {i}: expected {type(want).__name__}, got {type(have).__name__}"
        a, b = want.model_dump(), have.model_dump()
        fields = [f"{k}: expected {a[k]!r}, got {b.get(k)!r}" for k in a if a[k] != b.get(k)]
        return f"event {i} ({type(want).__name__}): " + "; ".join(fields)
    return f"expected {len(expected)} events, got {len(got)}"


# Projections


class ProjectionFailed(AssertionError):
    """An event the runtime would dead-letter, or whose rows it would store other than meant.

    `reason` is the runtime's failure reason (`handler_error`, `write_rejected`,
    `unknown_type`, `invalid_data`, ...) or `not_stored` for data the runtime
    would change or drop without a word: keys that are not columns, strings
    longer than their column, rows for a table that is not one of the
    projection's child tables.
    """

    def __init__(self, projection: str, env: EnvelopeMeta, reason: str, detail: str) -> None:
        super().__init__(
            f"projection {projection!r} cannot apply {env.type} "
            f"(stream {env.stream_id!r}, version {env.version}): {reason}: {detail}"
        )
        self.reason = reason
        self.detail = detail
        self.stream_id = env.stream_id
        self.version = env.version


def project(
    projection: Projection,
    *events: Event,
    stream_id: str,
    occurred_at: datetime = OCCURRED_AT,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> ReadModel:
    """The read model after `events` of one stream, versions 1..n; `.project` adds more."""
    return ReadModel(projection).project(
        *events,
        stream_id=stream_id,
        occurred_at=occurred_at,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


@dataclass(slots=True)
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class ReadModel:
    """The rows a projection holds: its documents by stream id and its child tables' rows.

    Immutable: `project` returns a new read model, so one can branch from another.
    """

    projection: Projection
    _docs: Mapping[str, Doc] = field(default_factory=dict)
    # child table name -> (stream id, row), in the order they were written
    _rows: Mapping[str, Sequence[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    _offset: int = 0

    @property
    def docs(self) -> dict[str, Doc]:
        """Every document, by stream id, with the `id` and `version` the runtime sets."""
        return {k: dict(v) for k, v in self._docs.items()}

    @property
    def doc(self) -> Doc:
        """The only document; an `AssertionError` unless there is exactly one."""
        if len(self._docs) != 1:
            raise AssertionError(
                f"expected one document in {self.projection.doc_table.name!r}, found {len(self._docs)} "
                f"({', '.join(self._docs) or 'none'}); use .document(stream_id)"
            )
        return self.docs.popitem()[1]

    def document(self, stream_id: str) -> Doc:
        if stream_id not in self._docs:
            known = ", ".join(self._docs) or "none"
            raise AssertionError(f"no document for stream {stream_id!r} (documents: {known})")
        return dict(self._docs[stream_id])

    def rows(self, table: Table | str, stream_id: str | None = None) -> list[dict[str, Any]]:
        """The rows of a child table in the order they were written; of one stream's events if given."""
        name = table if isinstance(table, str) else table.name
        if name == self.projection.doc_table.name:
            return [self.document(stream_id)] if stream_id is not None else list(self.docs.values())
        if name not in {t.name for t in self.projection.child_tables}:
            raise AssertionError(f"{name!r} is not a table of projection {self.projection.name!r}")
        return [dict(r) for sid, r in self._rows.get(name, ()) if stream_id in (None, sid)]

    def project(
        self,
        *events: Event,
        stream_id: str,
        occurred_at: datetime = OCCURRED_AT,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> ReadModel:
        """This read model after `events`, appended to stream `stream_id` after its last version."""
        docs = dict(self._docs)
        rows = {name: list(written) for name, written in self._rows.items()}
        offset = self._offset
        for event in events:
            doc = docs.get(stream_id)
            version = int(doc["version"]) + 1 if doc else 1
            meta = envelope(
                event,
                stream_type=self.projection,
                stream_id=stream_id,
                version=version,
                occurred_at=occurred_at,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
            folded = _decode_and_fold(self.projection, _record(meta, offset), doc)
            offset += 1
            try:
                _write(self.projection, stream_id, folded, docs, rows)
            except _Refused as refused:
                raise ProjectionFailed(self.projection.name, meta, refused.reason, str(refused)) from None
        return ReadModel(self.projection, docs, rows, offset)


def _record(meta: EventEnvelope, offset: int) -> _Record:
    """The event as the command API writes it to Kafka."""
    value, headers = encode_envelope(
        event_id=str(meta.event_id),
        stream_type=meta.stream_type,
        stream_id=meta.stream_id,
        version=meta.version,
        type=meta.type,
        schema_version=meta.schema_version,
        occurred_at=meta.occurred_at,
        correlation_id=meta.correlation_id,
        causation_id=meta.causation_id,
        data=meta.data,
    )
    return _Record(f"memory.{meta.stream_type}", 0, offset, meta.stream_id.encode(), value, headers)


def _decode_and_fold(projection: Projection, record: _Record, doc: Doc | None) -> Folded:
    """The projector's `decode` and `fold` of one record; what either refuses raises `ProjectionFailed`."""
    item = decode(projection, record)
    if not isinstance(item, Decoded):
        meta = decode_value(record.value)
        raise ProjectionFailed(projection.name, meta, item.reason, item.detail)
    raised: list[Exception] = []
    watched = dataclasses.replace(
        projection, handlers={k: _watch(h, raised) for k, h in projection.handlers.items()}
    )
    folded = fold(watched, {item.envelope.stream_id: doc} if doc else {}, [item])
    if folded.failures:
        failure = folded.failures[0]
        cause = raised[0] if raised else None
        raise ProjectionFailed(projection.name, item.envelope, failure.reason, failure.detail) from cause
    return folded


def _write(
    projection: Projection,
    stream_id: str,
    folded: Folded,
    docs: dict[str, Doc],
    rows: dict[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    """Upsert the document and append the child rows, as the read store does; `_Refused` if it would not."""
    docs[stream_id] = _stored(projection.doc_table, folded.docs[stream_id], rows)
    tables = {t.name: t for t in projection.child_tables}
    for name, appended in folded.appends.items():
        if name not in tables:
            raise _NotStored(f"rows for {name!r}, which is not a child table of the projection")
        written = rows.setdefault(name, [])
        for row in appended:
            new = _stored(tables[name], row, rows)
            # Keyed like the table: a row that collides with one written is dropped, not replaced.
            if not any(_conflict(tables[name], new, old) for _, old in written):
                written.append((stream_id, new))


def _watch(handler: Handler, raised: list[Exception]) -> Handler:
    """`handler`, keeping what it raises: the runtime keeps only its text, a test wants the traceback."""

    def watched(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
        try:
            return handler(doc, env, event)
        except Exception as exc:
            raised.append(exc)
            raise

    return watched


class _Refused(Exception):
    reason = "write_rejected"


class _NotStored(_Refused):
    reason = "not_stored"


def _stored(table: Table, values: Mapping[str, Any], rows: Mapping[str, Sequence[object]]) -> dict[str, Any]:
    """The row `values` becomes in `table`: every column, server defaults for those left out.

    The PostgreSQL writer inserts the columns the handler gave, so a left-out
    column takes its server default (or NULL), never a Python-side `default=`.
    Refuses what PostgreSQL refuses (a NULL in a NOT NULL column, a NUL in a
    string), and what it would store other than given: keys that are not
    columns, which its insert leaves out, and strings longer than their
    column, which its cast to the column's type cuts short.
    """
    unknown = sorted(set(values) - set(table.c.keys()))
    if unknown:
        raise _NotStored(f"{table.name} has no column {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for column in table.c:
        if column.name in values:
            value = values[column.name]
        elif column is table.autoincrement_column:
            value = len(rows.get(table.name, ())) + 1
        else:
            value = _server_default(column)
        _check(table, column, value, given=column.name in values)
        out[column.name] = value
    return out


def _server_default(column: Column[Any]) -> Any:
    server = column.server_default
    if server is None:
        return None
    if isinstance(server, DefaultClause) and isinstance(server.arg, str):
        try:
            kind = column.type.python_type
        except NotImplementedError:
            return server.arg
        if kind is bool:
            return server.arg.strip().lower() in ("1", "t", "true", "y", "yes", "on")
        return kind(server.arg) if kind in (int, float) else server.arg
    raise TypeError(
        f"the server default of {column.table.name}.{column.name} is SQL, which cannot run in memory;"
        " set the column in the handler"
    )


def _check(table: Table, column: Column[Any], value: Any, *, given: bool) -> None:
    where = f"{table.name}.{column.name}"
    if value is None:
        if column.nullable:
            return
        if given:
            raise _Refused(f"{where} is NOT NULL but the row sets it to None")
        hint = (
            " (a Python-side default is not applied: the writer inserts by column)" if column.default else ""
        )
        raise _Refused(f"{where} is NOT NULL and has no server default, but the row leaves it out{hint}")
    if isinstance(value, str):
        length = column.type.length if isinstance(column.type, String) else None
        if length is not None and len(value) > length:
            # The PostgreSQL writer casts to the column's type, and a cast cuts the string short.
            raise _NotStored(
                f"{where}: {len(value)} characters do not fit {column.type}; "
                f"PostgreSQL would keep the first {length}"
            )
        if "\x00" in value:
            raise _Refused(f"{where}: contains a NUL character (U+0000), which PostgreSQL cannot store")


def _conflict(table: Table, new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether `new` collides with `old` on a key, so `ON CONFLICT DO NOTHING` drops it."""
    keys: list[list[str]] = [[c.name for c in table.primary_key.columns]]
    for constraint in (*table.constraints, *table.indexes):
        if isinstance(constraint, UniqueConstraint) or (isinstance(constraint, Index) and constraint.unique):
            keys.append([c.name for c in constraint.columns])
    return any(cols and all(new[c] is not None and new[c] == old[c] for c in cols) for cols in keys)


# Process managers


def process(pm: ProcessManager[P]) -> ProcessRun[P]:
    """A process manager with no instance yet; feed it events with `when`.

        run = process(SAGA).when(TransferRequested(...), stream_id="t-1")
        run.then(Dispatch("account", "a-1", Withdraw(amount=5, reference="t-1")))
        run.refused("insufficient_funds").then(Dispatch("transfer", "t-1", FailTransfer(...)))
        run.deadline_passes().then(...)

    Each step is taken as the runtime takes it: the state is reloaded from its
    stored JSON first, every event must be one of the contracts' events (its
    stream type is the contract declaring it), and an event that correlates
    to another instance (or to none), or that comes after the instance is
    done or stuck, leaves it as it was (`ignored`), as the runtime does.
    """
    return ProcessRun(pm, None, pm.initial, (), None, False, None, False, {})


@dataclass(frozen=True)
class ProcessRun(Generic[P]):
    """One instance after its latest step: its state, the commands that step sent, its deadline."""

    pm: ProcessManager[P]
    instance: str | None
    state: P
    commands: tuple[Dispatch, ...]
    deadline: datetime | None
    done: bool
    stuck: str | None  # the refusal that left it stuck, if one did
    ignored: bool  # the latest event did not concern this instance
    versions: dict[tuple[str, str], int]

    def when(
        self,
        event: Event,
        *,
        stream_id: str,
        version: int | None = None,
        occurred_at: datetime = OCCURRED_AT,
        correlation_id: str | None = None,
    ) -> ProcessRun[P]:
        """Deliver `event` of stream `stream_id` (version: the stream's next, unless given)."""
        contract = self._contract_of(event)
        key = (contract.stream_type, stream_id)
        at = version if version is not None else self.versions.get(key, 0) + 1
        versions = {**self.versions, key: at}
        env = envelope(
            event,
            stream_type=contract,
            stream_id=stream_id,
            version=at,
            occurred_at=occurred_at,
            correlation_id=correlation_id,
        )
        meta = EnvelopeMeta.model_validate(env.model_dump(exclude={"data"}))
        iid = self.pm.correlate(meta, event)
        if iid is None or (self.instance is not None and iid != self.instance) or self.stuck or self.done:
            return dataclasses.replace(self, commands=(), ignored=True, versions=versions)
        step = self.pm.handle(self._stored_state(), meta, event)
        if self.instance is None and self.pm.untouched(step):
            return dataclasses.replace(self, commands=(), ignored=True, versions=versions)
        return self._after(iid, step, versions)

    def refused(self, code: str, detail: str = "", command: int = 0) -> ProcessRun[P]:
        """The latest step's `command`-th command was refused with `code`: `on_refused` decides."""
        if not 0 <= command < len(self.commands):
            raise AssertionError(f"the latest step sent {len(self.commands)} command(s), none at {command}")
        assert self.instance is not None
        refusal = Refusal(self.commands[command], code, detail)
        step = self.pm.on_refused(self._stored_state(), self.instance, refusal)
        if step is None:
            return dataclasses.replace(self, commands=(), stuck=f"{code}: {detail}", ignored=False)
        return self._after(self.instance, step, self.versions)

    def deadline_passes(self) -> ProcessRun[P]:
        """The deadline passed with every command sent: `on_deadline` decides."""
        if self.deadline is None or self.done or self.stuck:
            raise AssertionError(f"no deadline can pass: deadline={self.deadline}, done={self.done}")
        assert self.instance is not None
        return self._after(
            self.instance, self.pm.on_deadline(self._stored_state(), self.instance), self.versions
        )

    def then(self, *expected: Dispatch) -> ProcessRun[P]:
        """Assert the latest step sent exactly `expected`, in order (none: no commands)."""
        if list(expected) != list(self.commands):
            raise AssertionError(
                f"{self.pm.name}: wrong commands\n"
                f"expected:\n{_issues(expected)}\ngot:\n{_issues(self.commands)}"
            )
        return self

    def _after(self, iid: str, step: Step[P], versions: dict[tuple[str, str], int]) -> ProcessRun[P]:
        return ProcessRun(
            self.pm, iid, step.state, tuple(step.commands), step.deadline, step.done, None, False, versions
        )

    def _contract_of(self, event: Event) -> StreamContract:
        name = type(event).__name__
        for c in self.pm.contracts:
            if c.events.get(name) is type(event):
                return c
        raise AssertionError(f"{name} is not an event of {self.pm.name!r}'s contracts")

    def _stored_state(self) -> P:
        """The state as the runtime reloads it from its row."""
        reloaded = self.pm.load_state(jsonutil.loads(jsonutil.dumps(self.state.model_dump(mode="json"))))
        if reloaded != self.state:
            raise AssertionError(
                "the state does not survive its stored JSON:\n"
                f"  kept:     {self.state!r}\n  reloaded: {reloaded!r}"
            )
        return reloaded


def _issues(issues: Sequence[Dispatch]) -> str:
    return "\n".join(f"  {i.stream_type}/{i.stream_id}: {i.command!r}" for i in issues) or "  (none)"
