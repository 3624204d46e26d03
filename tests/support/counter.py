"""A tiny second aggregate, declared only in the tests.

It proves that adding an aggregate (and its projection) is declaring it: the
command API, the publisher and the projector runtime are used unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Integer, MetaData, String, Table

from eventfold.aggregate import Aggregate, Aggregates, Rejected
from eventfold.projection import Change, Doc, Projection
from examples.bank.account import ACCOUNT_AGGREGATE
from schemas.base import Command, Event
from schemas.envelope import EventEnvelope
from schemas.registry import declare_stream


class Increment(Command):
    by: int = Field(gt=0, le=1000)
    note: str = Field(default="", max_length=200)


class Reset(Command):
    pass


class Incremented(Event):
    by: int


class WasReset(Event):
    pass


class Counter(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: int = 0


LIMIT = 100


def decide(state: Counter, command: Command) -> Sequence[Event]:
    match command:
        case Increment(by=by):
            if state.value + by > LIMIT:
                raise Rejected("counter_overflow", f"{state.value} + {by} exceeds {LIMIT}")
            return [Incremented(by=by)]
        case Reset():
            return [WasReset()] if state.value else []
    raise TypeError(type(command).__name__)


def evolve(state: Counter, event: Event) -> Counter:
    match event:
        case Incremented(by=by):
            return Counter(value=state.value + by)
        case WasReset():
            return Counter()
    raise TypeError(type(event).__name__)


COUNTER = declare_stream("counter", commands=[Increment, Reset], events=[Incremented, WasReset])
COUNTER_AGGREGATE: Aggregate[Counter] = Aggregate(COUNTER, Counter(), decide, evolve)


def with_counter() -> Aggregates:
    return Aggregates([ACCOUNT_AGGREGATE, COUNTER_AGGREGATE])


# Its projection: one row per counter, and a step row per event.
metadata = MetaData()
counters = Table(
    "test_counters",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("resets", Integer, nullable=False),
    Column("version", Integer, nullable=False),
)
counter_steps = Table(
    "test_counter_steps",
    metadata,
    Column("counter_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("value_after", Integer, nullable=False),
)


def incremented(doc: Doc | None, env: EventEnvelope, event: Event) -> Change:
    assert isinstance(event, Incremented)
    value = (doc["value"] if doc else 0) + event.by
    step = {"counter_id": env.stream_id, "version": env.version, "value_after": value}
    return Change({"value": value, "resets": doc["resets"] if doc else 0}, [(counter_steps, step)])


def was_reset(doc: Doc | None, env: EventEnvelope, event: Event) -> Change:
    step = {"counter_id": env.stream_id, "version": env.version, "value_after": 0}
    return Change({"value": 0, "resets": (doc["resets"] if doc else 0) + 1}, [(counter_steps, step)])


COUNTERS = Projection(
    name="test_counters",
    contract=COUNTER,
    doc_table=counters,
    child_tables=(counter_steps,),
    handlers={"Incremented": incremented, "WasReset": was_reset},
    filters=["resets"],
)
