"""Changing a projection is declaring a new version: the projector rebuilds it at start.

The test-only `counter` stream feeds a projection declared here in two
versions; the second adds a column its handlers fill, so the first's tables
cannot take its writes and the live runtime waits for the rebuild.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, inspect, select, update

from eventfold.db import create_engine
from eventfold.projection import Change, Doc, Projection
from eventfold.settings import DatabaseSettings
from projector.rebuild import _BUSY_S, rebuild_projection
from projector.tables import projection_status
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from tests.helpers import uid, wait_until
from tests.support.counter import COUNTER, Incremented, with_counter
from tests.support.projection import fast_projector, running_projector


def _tallies(*extra: Column[Any]) -> Table:
    return Table(
        "test_tallies",
        MetaData(),
        Column("id", String(128), primary_key=True),
        Column("value", Integer, nullable=False),
        *extra,
        Column("version", Integer, nullable=False),
    )


def _v1_incremented(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Incremented)
    return Change({"value": (doc["value"] if doc else 0) + event.by})


def _v1_reset(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"value": 0})


def _v2_incremented(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Incremented)
    value = (doc["value"] if doc else 0) + event.by
    return Change({"value": value, "doubled": 2 * value})


def _v2_reset(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    return Change({"value": 0, "doubled": 0})


V1 = Projection(
    name="test_tallies",
    contract=COUNTER,
    doc_table=_tallies(),
    handlers={"Incremented": _v1_incremented, "WasReset": _v1_reset},
)
V2 = Projection(
    name="test_tallies",
    contract=COUNTER,
    doc_table=_tallies(Column("doubled", Integer, nullable=False)),
    handlers={"Incremented": _v2_incremented, "WasReset": _v2_reset},
    version=2,
)


async def _increment(cmd: Any, sid: str, by: int) -> None:
    r = await cmd.post(f"/commands/counter/{sid}", json={"type": "Increment", "data": {"by": by}})
    assert r.status_code == 200, r.text


async def _status(engine: Any) -> Any:
    c = projection_status.c
    async with engine.connect() as conn:
        stmt = select(c.state, c.version, c.generation).where(c.projection == "test_tallies")
        return (await conn.execute(stmt)).one_or_none()


async def _set_state(engine: Any, state: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(projection_status)
            .where(projection_status.c.projection == "test_tallies")
            .values(state=state, updated_at=time.time())
        )


async def _rows(engine: Any, table: Table) -> dict[str, tuple[Any, ...]]:
    """The rows by id (none while the projector has not created the table yet)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda sync: inspect(sync).has_table(table.name)):
            return {}
        found = (await conn.execute(select(table))).mappings().all()
    return {r["id"]: tuple(r[c.name] for c in table.c if c.name != "id") for r in found}


async def test_a_new_version_with_a_new_column_is_rebuilt_before_the_runtime_writes(
    command_client, make_settings, own_db: DatabaseSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    engine = create_engine(own_db.read_db_url)
    ids = sorted(uid("tally") for _ in range(3))
    try:
        async with command_client(settings, with_counter()) as cmd:
            async with running_projector(settings, [V1]):
                for sid in ids:
                    await _increment(cmd, sid, 5)

                async def v1_rows() -> Any:
                    rows = await _rows(engine, V1.doc_table)
                    return rows if len(rows) == 3 else None

                assert await wait_until(v1_rows, what="version 1 rows") == {sid: (5, 1) for sid in ids}
            # Events version 1 never saw, for the new version's runtime to find
            # waiting; a projection that had failed (a new version is how its
            # fix would ship); and a rebuild that looks busy for a few seconds,
            # so the first attempts are refused and the runtime is up meanwhile.
            for sid in ids:
                await _increment(cmd, sid, 2)
            await _set_state(engine, "failed")
            async with engine.begin() as conn:
                await conn.execute(
                    insert(projection_status).values(
                        projection="test_tallies@g2",
                        state="rebuilding",
                        version=2,
                        events_applied=0,
                        updated_at=time.time() - _BUSY_S + 6,
                    )
                )
            caplog.set_level(logging.INFO, logger="eventfold.projector")
            async with running_projector(settings, [V2]):

                async def swapped() -> Any:
                    # Rows first, then the status: a status still at version 1
                    # proves the rows were read before the swap.
                    rows = await _rows(engine, V1.doc_table)
                    found = await _status(engine)
                    if found.version == 2:
                        return found
                    # The old generation serves what version 1 wrote, untouched.
                    assert rows == {sid: (5, 1) for sid in ids}
                    return None

                found = await wait_until(swapped, timeout=60, what="the rebuild to version 2")
                assert (found.state, found.generation) == ("live", 2)
                assert await _rows(engine, V2.doc_table) == {sid: (7, 14, 2) for sid in ids}
                await _increment(cmd, ids[0], 1)

                async def live() -> Any:
                    rows = await _rows(engine, V2.doc_table)
                    return rows if rows[ids[0]] == (8, 16, 3) else None

                await wait_until(live, what="version 2 applying live events")
        messages = [r.getMessage() for r in caplog.records if r.name == "eventfold.projector"]
        # The live runtime never tried the new handlers on the old tables.
        assert not [m for m in messages if "batch failed" in m], messages
    finally:
        await engine.dispose()


async def test_a_rebuild_of_a_projection_that_never_ran_creates_its_tables(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    sid = uid("tally")
    async with command_client(settings, with_counter()) as cmd:
        await _increment(cmd, sid, 4)
    engine = create_engine(own_db.read_db_url)
    try:
        result = await rebuild_projection(settings, V2, engine)
        assert result.generation == 2
        assert await _rows(engine, V2.doc_table) == {sid: (4, 8, 1)}
        assert tuple(await _status(engine)) == ("live", 2, 2)
    finally:
        await engine.dispose()
