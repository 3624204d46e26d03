"""A projection of the test-only counter, for what the bank's does not use.

Columns a handler leaves out (server defaults, NULL, a Python-side default),
a child table keyed too coarsely (one row per counter, so later appends
collide), and one with an autoincrement key that records the envelope.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table

from eventfold.projection import Change, Doc, Handler, Projection
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from tests.support.counter import COUNTER, Incremented

metadata = MetaData()
tallies = Table(
    "test_tallies",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("value", Integer, nullable=False),
    Column("label", String(10), nullable=False, server_default="none"),
    Column("resets", Integer, nullable=False, server_default="0"),
    Column("note", String(10)),
    Column("weight", Integer, default=1),
)
latest = Table(
    "test_tally_latest",
    metadata,
    Column("counter_id", String(20), primary_key=True),
    Column("value", Integer, nullable=False),
)
audit = Table(
    "test_tally_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("correlation_id", String(36)),
)


def tally(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Incremented)
    value = (doc["value"] if doc else 0) + event.by
    rows: list[tuple[Table, dict[str, Any]]] = [
        (latest, {"counter_id": env.stream_id, "value": value}),
        (audit, {"event_id": str(env.event_id), "correlation_id": env.correlation_id}),
    ]
    return Change({"value": value, "resets": doc["resets"] if doc else 0}, rows)


def reset(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert doc is not None
    return Change({"value": 0, "resets": doc["resets"] + 1, "label": "reset"})


def counting(**handlers: Handler) -> Projection:
    """The tallies projection, with some handlers replaced."""
    return Projection(
        "test_tallies",
        COUNTER,
        tallies,
        {"Incremented": tally, "WasReset": reset, **handlers},
        child_tables=(latest, audit),
    )
