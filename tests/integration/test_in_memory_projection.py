"""`eventfold.testing.project` against the real read store.

The same events, encoded by `envelope` and written one per transaction by the
projector's `fold_and_write`, leave in PostgreSQL and SQLite the rows `project`
holds in memory; a row the database refuses is one `project` refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.db import create_engine
from eventfold.projection import Change, Doc, Projection
from eventfold.settings import DatabaseSettings
from eventfold.testing import OCCURRED_AT, ProjectionFailed, ReadModel, envelope
from examples.bank.contracts import AccountClosed, AccountOpened, Deposited, Withdrawn
from examples.bank.projection import ACCOUNTS
from projector import store
from projector.apply import fold_and_write
from projector.batch import decode
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from schemas.mapper import encode_value
from tests.support.counter import Incremented, WasReset
from tests.support.tallies import counting, metadata

LATER = OCCURRED_AT + timedelta(hours=2)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


async def write_one_by_one(
    engine: AsyncEngine, projection: Projection, events: Sequence[tuple[str, Event, datetime]]
) -> ReadModel:
    """Write `events` through the runtime, one batch each; return what `project` holds for them."""
    view = ReadModel(projection)
    versions: dict[str, int] = {}
    for offset, (sid, event, at) in enumerate(events):
        versions[sid] = versions.get(sid, 0) + 1
        env = envelope(
            event,
            stream_type=projection,
            stream_id=sid,
            version=versions[sid],
            occurred_at=at,
            correlation_id=f"corr-{offset}",
        )
        item = decode(projection, Rec("t", 0, offset, sid.encode(), encode_value(env)))
        async with engine.begin() as conn:
            folded = await fold_and_write(conn, projection, [item], dead_letter=None)
        assert folded.failures == []
        view = view.project(event, stream_id=sid, occurred_at=at, correlation_id=f"corr-{offset}")
    return view


async def stored(engine: AsyncEngine, table: Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table))).mappings().all()
    return sorted((normal(dict(r)) for r in rows), key=lambda r: [str(r[c.name]) for c in table.primary_key])


def held(view: ReadModel, table: Table) -> list[dict[str, Any]]:
    return sorted(
        (normal(r) for r in view.rows(table)), key=lambda r: [str(r[c.name]) for c in table.primary_key]
    )


def normal(row: dict[str, Any]) -> dict[str, Any]:
    # SQLite keeps wall-clock time only: its datetimes come back naive, in UTC.
    return {
        k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in row.items()
    }


@pytest.fixture
async def engine(own_db: DatabaseSettings) -> Any:
    engine = create_engine(own_db.read_db_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_the_bank_read_model_matches_the_read_store(engine: AsyncEngine) -> None:
    events: list[tuple[str, Event, datetime]] = [
        ("a-1", AccountOpened(owner="ann"), OCCURRED_AT),
        ("b-1", AccountOpened(owner="bob"), OCCURRED_AT),
        ("a-1", Deposited(amount=70, reference="pay"), OCCURRED_AT),
        ("b-1", Deposited(amount=5, reference=""), LATER),
        ("a-1", Withdrawn(amount=70, reference="rent"), LATER),
        ("a-1", AccountClosed(), LATER),
    ]
    view = await write_one_by_one(engine, ACCOUNTS, events)
    for table in ACCOUNTS.tables:
        assert await stored(engine, table) == held(view, table)
    assert len(view.rows(ACCOUNTS.child_tables[0])) == 3


async def test_defaults_keys_and_colliding_rows_match_the_read_store(engine: AsyncEngine) -> None:
    projection = counting()
    events: list[tuple[str, Event, datetime]] = [
        ("c-1", Incremented(by=2), OCCURRED_AT),
        ("c-2", Incremented(by=5), OCCURRED_AT),
        ("c-1", Incremented(by=3), OCCURRED_AT),
        ("c-1", WasReset(), OCCURRED_AT),
        ("c-2", Incremented(by=1), OCCURRED_AT),
    ]
    view = await write_one_by_one(engine, projection, events)
    doc_table, latest, audit = projection.tables
    docs = await stored(engine, doc_table)
    if engine.dialect.name == "sqlite":
        # SQLite's writer is SQLAlchemy's insert, which applies a Python-side
        # default; PostgreSQL's (and `project`'s) inserts by column do not.
        assert [d.pop("weight") for d in docs] == [1, 1]
        docs = [{**d, "weight": None} for d in docs]
    assert docs == held(view, doc_table)
    assert [(d["id"], d["label"], d["resets"], d["note"]) for d in docs] == [
        ("c-1", "reset", 1, None),
        ("c-2", "none", 0, None),
    ]
    assert (
        await stored(engine, latest)
        == held(view, latest)
        == [
            {"counter_id": "c-1", "value": 2},
            {"counter_id": "c-2", "value": 5},
        ]
    )
    assert await stored(engine, audit) == held(view, audit)


def leaving_out_value(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"label": "x"})


def too_long(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"value": 1, "label": "x" * 11})


def with_nul(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"value": 1, "note": "a\x00b"})


@pytest.mark.parametrize(
    ("handler", "enforced_by_sqlite"),
    [(leaving_out_value, True), (with_nul, False)],
)
async def test_a_row_the_database_refuses_is_one_project_refuses(
    engine: AsyncEngine, handler: Any, enforced_by_sqlite: bool
) -> None:
    projection = counting(Incremented=handler)
    with pytest.raises(ProjectionFailed) as err:
        ReadModel(projection).project(Incremented(by=1), stream_id="c-1")
    assert err.value.reason == "write_rejected"
    if engine.dialect.name == "sqlite" and not enforced_by_sqlite:
        return  # SQLite stores a NUL; production's PostgreSQL does not
    with pytest.raises(Exception) as refused:
        await write_one(engine, projection, Incremented(by=1))
    assert store.refuses_values(refused.value)


async def test_a_string_longer_than_its_column_is_not_stored_as_given(engine: AsyncEngine) -> None:
    projection = counting(Incremented=too_long)
    with pytest.raises(ProjectionFailed, match="PostgreSQL would keep the first 10") as err:
        ReadModel(projection).project(Incremented(by=1), stream_id="c-1")
    assert err.value.reason == "not_stored"
    await write_one(engine, projection, Incremented(by=1))
    (doc,) = await stored(engine, projection.doc_table)
    # PostgreSQL's writer casts to VARCHAR(10), which cuts; SQLite ignores the length.
    assert doc["label"] == "x" * (10 if engine.dialect.name == "postgresql" else 11)


async def write_one(engine: AsyncEngine, projection: Projection, event: Event) -> None:
    env = envelope(event, stream_type=projection, stream_id="c-1")
    item = decode(projection, Rec("t", 0, 0, b"c-1", encode_value(env)))
    async with engine.begin() as conn:
        folded = await fold_and_write(conn, projection, [item], dead_letter=None)
    assert folded.failures == []
