"""A projection declared only in the tests, for the test-only `counter` aggregate:
the projector runtime serves it unchanged."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from eventfold.db import create_engine
from eventfold.settings import DatabaseSettings
from tests.helpers import uid, wait_until
from tests.support.counter import COUNTERS, counter_steps, counters, metadata, with_counter
from tests.support.projection import fast_projector, running_projector


async def test_counter_projection_needs_no_runtime_change(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    engine = create_engine(own_db.read_db_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    ids = [uid("ctr") for _ in range(4)]
    try:
        async with command_client(settings, with_counter()) as cmd, running_projector(settings, [COUNTERS]):
            for n, sid in enumerate(ids):
                for by in (5, 7, 11)[: n + 1]:
                    body = {"type": "Increment", "data": {"by": by}}
                    r = await cmd.post(f"/commands/counter/{sid}", json=body)
                    assert r.status_code == 200, r.text
            r = await cmd.post(f"/commands/counter/{ids[3]}", json={"type": "Reset", "data": {}})
            assert r.status_code == 200, r.text
            r = await cmd.post(f"/commands/counter/{ids[3]}", json={"type": "Increment", "data": {"by": 2}})
            assert r.status_code == 200, r.text

            async def rows() -> Any:
                async with engine.connect() as conn:
                    found = (await conn.execute(select(counters).order_by(counters.c.id))).all()
                    return found if len(found) == 4 and max(r.version for r in found) == 5 else None

            got = await wait_until(rows, what="counter rows")
        expected = {ids[0]: (5, 0, 1), ids[1]: (12, 0, 2), ids[2]: (23, 0, 3), ids[3]: (2, 1, 5)}
        assert {r.id: (r.value, r.resets, r.version) for r in got} == expected
        async with engine.connect() as conn:
            steps = (await conn.execute(select(counter_steps))).all()
        assert len(steps) == 1 + 2 + 3 + 5
    finally:
        await engine.dispose()
