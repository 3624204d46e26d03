"""`apply_batch` against both real stores: a record the database refuses is
isolated and dead-lettered, the rest of its batch commits; a failure that is
not about the values written dead-letters nothing and propagates.

The refusal here is a CHECK constraint, which SQLite and PostgreSQL both
enforce (SQLite stores a NUL in text, so the NUL case is PostgreSQL's alone:
see test_hostile_records.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, Column, Integer, MetaData, String, Table, select
from sqlalchemy.exc import DBAPIError

from eventfold.db import create_engine
from eventfold.projection import Change, Doc, Projection
from eventfold.settings import DatabaseSettings
from projector import store
from projector.apply import apply_batch, next_offsets
from projector.batch import Failure, decode
from projector.tables import projection_failures, projection_offsets
from schemas.base import Event
from schemas.envelope import EnvelopeMeta, EventEnvelope
from schemas.mapper import encode_value
from tests.helpers import uid
from tests.support.counter import COUNTER, Incremented

metadata = MetaData()
checked = Table(
    "test_checked_counters",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("value <= 100", name="ck_test_checked_value"),
)
missing = Table(
    "test_never_created",
    MetaData(),
    Column("id", String(128), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("version", Integer, nullable=False),
)
TOPIC = "isolation.counter.events"


def incremented(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Incremented)
    return Change({"value": (doc["value"] if doc else 0) + event.by})


def was_reset(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"value": 0})


def projection(table: Table) -> Projection:
    return Projection(
        name=f"test_checked_{uuid.uuid4().hex[:8]}",
        contract=COUNTER,
        doc_table=table,
        handlers={"Incremented": incremented, "WasReset": was_reset},
    )


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def increments(streams: dict[str, list[int]]) -> list[Rec]:
    """Records of `Incremented` events, stream by stream round-robin, on two partitions."""
    out: list[Rec] = []
    offsets = [0, 0]
    longest = max(len(v) for v in streams.values())
    for i in range(longest):
        for n, (sid, steps) in enumerate(streams.items()):
            if i < len(steps):
                env = EventEnvelope(
                    event_id=uuid.uuid4(),
                    stream_type="counter",
                    stream_id=sid,
                    version=i + 1,
                    type="Incremented",
                    occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                    data={"by": steps[i]},
                )
                part = n % 2
                out.append(Rec(TOPIC, part, offsets[part], sid.encode(), encode_value(env)))
                offsets[part] += 1
    return sorted(out, key=lambda r: (r.partition, r.offset))


class Collector:
    def __init__(self) -> None:
        self.sent: list[Failure] = []

    async def __call__(self, projection: Projection, failures: Sequence[Failure]) -> None:
        self.sent.extend(failures)


async def test_a_refused_record_is_dead_lettered_and_the_rest_commits(own_db: DatabaseSettings) -> None:
    engine = create_engine(own_db.read_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        proj = projection(checked)
        await store.ensure_status(engine, proj)
        good, bad = [uid("ok") for _ in range(5)], uid("over")
        # `bad` passes the CHECK at version 1 and breaks it at version 2; its
        # version 3 must then wait as a gap rather than apply over the hole.
        records = increments({**{s: [10, 20, 30] for s in good}, bad: [50, 90, 1]})
        items = [decode(proj, r) for r in records]
        sink = Collector()
        result = await apply_batch(
            engine,
            proj,
            items,
            next_offsets(items),
            allowed_states=frozenset({store.LIVE}),
            dead_letter=sink,
            state_after=store.LIVE,
        )
        assert result.allowed and result.folded is not None
        async with engine.connect() as conn:
            docs = {r.id: (r.value, r.version) for r in await conn.execute(select(checked))}
            c = projection_failures.c
            failures = (
                await conn.execute(
                    select(c.offset, c.reason, c.detail).where(c.projection == proj.name).order_by(c.offset)
                )
            ).all()
            o = projection_offsets.c
            stored = dict(
                ((t, p), n)
                for t, p, n in await conn.execute(
                    select(o.topic, o.partition, o.next_offset).where(o.projection == proj.name)
                )
            )
        assert docs == {**{s: (60, 3) for s in good}, bad: (50, 1)}
        bad_records = [r for r in records if r.key == bad.encode()]
        assert [(f.offset, f.reason) for f in failures] == [
            (bad_records[1].offset, "write_rejected"),
            (bad_records[2].offset, "version_gap"),
        ]
        assert "ck_test_checked_value" in failures[0].detail
        assert [(f.offset, f.reason, f.value) for f in sink.sent] == [
            (bad_records[1].offset, "write_rejected", bad_records[1].value)
        ]
        assert stored == next_offsets(items)
        assert result.folded.applied == 3 * len(good) + 1
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()


async def test_a_failure_not_about_the_values_dead_letters_nothing(own_db: DatabaseSettings) -> None:
    """A table that does not exist fails every record alike: retry the batch, isolate nothing."""
    engine = create_engine(own_db.read_db_url)
    try:
        proj = projection(missing)
        await store.ensure_status(engine, proj)
        items = [decode(proj, r) for r in increments({uid("a"): [1, 2], uid("b"): [3]})]
        sink = Collector()
        with pytest.raises(DBAPIError) as raised:
            await apply_batch(
                engine,
                proj,
                items,
                next_offsets(items),
                allowed_states=frozenset({store.LIVE}),
                dead_letter=sink,
                state_after=store.LIVE,
            )
        assert not store.refuses_values(raised.value)
        assert sink.sent == []
        async with engine.connect() as conn:
            c = projection_failures.c
            rows: list[Any] = (await conn.execute(select(c.id).where(c.projection == proj.name))).all()
            o = projection_offsets.c
            offsets = (await conn.execute(select(o.topic).where(o.projection == proj.name))).all()
        assert rows == [] and offsets == []
    finally:
        await engine.dispose()
