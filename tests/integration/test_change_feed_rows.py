"""The change feed's rows, as the projector writes and prunes them, on PostgreSQL and SQLite."""

from __future__ import annotations

import time

import orjson
from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.settings import DatabaseSettings
from projector import store
from projector.batch import Folded
from projector.tables import CHANGE_SLOTS, view_changes
from tests.helpers import uid


def _folded(n: int, version: int = 1) -> Folded:
    """A batch that changed `n` documents, the last events applied in the order d0, d1, ..."""
    ids = [f"d{i}" for i in range(n)]
    return Folded(
        docs={d: {"id": d, "version": version} for d in ids},
        positions={d: ("t", 0, i) for i, d in enumerate(reversed(ids))}
        | {d: ("t", 0, n + i) for i, d in enumerate(ids)},
    )


async def _rows(engine, projection: str) -> list[tuple[int, list[list[object]]]]:
    c = view_changes.c
    async with engine.connect() as conn:
        found = await conn.execute(select(c.seq, c.changes).where(c.projection == projection).order_by(c.seq))
        return [(int(seq), orjson.loads(changes)) for seq, changes in found]


async def test_a_batch_is_one_row_in_the_order_its_documents_were_last_changed(db: DatabaseSettings) -> None:
    engine = create_engine(db.read_db_url)
    name = uid("p")
    try:
        async with engine.begin() as conn:
            await store.record_changes(conn, name, _folded(3, version=2))
        [(_, changes)] = await _rows(engine, name)
        assert changes == [["d0", 2], ["d1", 2], ["d2", 2]]
    finally:
        await engine.dispose()


async def test_a_batch_changing_more_documents_than_a_row_holds_takes_several_rows(
    db: DatabaseSettings,
) -> None:
    engine = create_engine(db.read_db_url)
    name = uid("p")
    try:
        async with engine.begin() as conn:
            await store.record_changes(conn, name, _folded(CHANGE_SLOTS + 2))
        rows = await _rows(engine, name)
        assert [len(changes) for _, changes in rows] == [CHANGE_SLOTS, 2]
        assert rows[1][1] == [[f"d{CHANGE_SLOTS}", 1], [f"d{CHANGE_SLOTS + 1}", 1]]
    finally:
        await engine.dispose()


async def test_rows_written_after_pruning_them_all_are_numbered_after_the_pruned_ones(
    db: DatabaseSettings,
) -> None:
    """A subscriber's position must only grow: SQLite would number the next row 1 in an empty table."""
    engine = create_engine(db.read_db_url)
    name = uid("p")
    try:
        for _ in range(2):
            async with engine.begin() as conn:
                await store.record_changes(conn, name, _folded(1))
        before = await _rows(engine, name)
        assert await store.prune_changes(engine, name, older_than=time.time() + 1) == 2
        assert await _rows(engine, name) == []
        async with engine.begin() as conn:
            await store.record_changes(conn, name, _folded(1))
        [(seq, _)] = await _rows(engine, name)
        assert seq > before[-1][0]
    finally:
        await engine.dispose()
