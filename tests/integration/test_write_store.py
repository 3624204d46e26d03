"""Contract tests of the write store, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from command_api.decision import Head
from command_api.outcomes import Accepted, PendingCommand, VersionConflict
from command_api.store import CommitConflict, WriteStore
from eventfold.db import create_engine
from eventfold.settings import DatabaseSettings, KafkaSettings
from examples.bank.contracts import Deposit, OpenAccount
from tests.helpers import uid
from tests.support.bank import default_aggregates


def pending(sid: str, command: Any, expected: int | None = None, key: str | None = None) -> PendingCommand:
    return PendingCommand(
        "account",
        sid,
        command,
        expected,
        key,
        str(uuid.uuid4()),
        "corr",
        "cause",
        asyncio.get_running_loop().create_future(),
    )


class StaleStore(WriteStore):
    """Reads heads one version behind, as if another writer committed meanwhile."""

    async def _load_heads(self, conn: Any, keys: Any) -> dict[Any, Head]:
        heads = await super()._load_heads(conn, keys)
        return {k: replace(h, version=h.version - 1) if h.exists else h for k, h in heads.items()}


@pytest.fixture
async def engine(own_db: DatabaseSettings):
    # A store of its own: these rows are never published, and no other test's
    # relay should find them.
    eng = create_engine(own_db.write_db_url)
    yield eng
    await eng.dispose()


async def test_batch_decides_in_order_and_persists(engine) -> None:
    store = WriteStore(engine, default_aggregates(), KafkaSettings())
    sid = uid("ws")
    result = await store.commit(
        [
            pending(sid, OpenAccount(owner="a")),
            pending(sid, Deposit(amount=3)),
            pending(sid, Deposit(amount=4), 1),
        ]
    )
    first, second, third = result.outcomes
    assert isinstance(first, Accepted) and first.version == 1
    assert isinstance(second, Accepted) and second.version == 2
    assert third == VersionConflict(2)
    assert await store.read_stream("account", sid) == (2, {"status": "open", "owner": "a", "balance": 3})
    rows = await store.unpublished(10_000)
    assert [r.version for r, _ in rows if r.stream_id == sid] == [1, 2]
    # The next batch sees the unacknowledged events as predecessors to publish first.
    later = await store.commit([pending(sid, Deposit(amount=1))])
    assert [p.version for p in later.predecessors] == [1, 2]
    await store.finalize([r for r, _ in rows if r.stream_id == sid], [])
    assert [r.version for r, _ in await store.unpublished(10_000) if r.stream_id == sid] == [3]
    # Events the caller is publishing already are not handed back.
    own = await store.commit([pending(sid, Deposit(amount=1))], in_flight={("account", sid, 3)})
    assert own.predecessors == []
    mixed = await store.commit([pending(sid, Deposit(amount=1))], in_flight={("account", sid, 4)})
    stored = {r.version: r for r, _ in await store.unpublished(10_000) if r.stream_id == sid}
    assert mixed.predecessors == [stored[3]]


async def test_a_head_that_moved_fails_the_whole_batch(engine) -> None:
    store = WriteStore(engine, default_aggregates(), KafkaSettings())
    sid, other = uid("ws"), uid("ws")
    await store.commit([pending(sid, OpenAccount(owner="a")), pending(other, OpenAccount(owner="b"))])
    stale = StaleStore(engine, default_aggregates(), KafkaSettings())
    with pytest.raises(CommitConflict):
        await stale.commit([pending(other, Deposit(amount=1)), pending(sid, Deposit(amount=1))])
    # Nothing of the failed batch was written.
    assert (await store.read_stream("account", sid))[0] == 1
    assert (await store.read_stream("account", other))[0] == 1
    assert [r.version for r, _ in await store.unpublished(10_000) if r.stream_id in (sid, other)] == [1, 1]


async def test_two_creators_of_one_stream_cannot_both_win(engine) -> None:
    store = WriteStore(engine, default_aggregates(), KafkaSettings())
    sid = uid("ws")

    class Blind(WriteStore):
        """Believes the stream does not exist yet."""

        async def _load_heads(self, conn: Any, keys: Any) -> dict[Any, Head]:
            agg = self.aggregates.get("account")
            return {k: Head(0, agg.initial, False) for k in keys}

    await store.commit([pending(sid, OpenAccount(owner="first"))])
    with pytest.raises(CommitConflict):
        await Blind(engine, default_aggregates(), KafkaSettings()).commit(
            [pending(sid, OpenAccount(owner="second"))]
        )
    assert (await store.read_stream("account", sid))[1]["owner"] == "first"


async def test_the_outbox_reuses_the_space_of_cleared_rows_once_reclaimed(engine) -> None:
    """A queue table deletes every row it inserts: reclaimed, it stays the size of one round."""
    store = WriteStore(engine, default_aggregates(), KafkaSettings())
    sizes = []
    for n in range(5):
        sids = [uid(f"vac{n}") for _ in range(400)]
        await store.commit([pending(sid, OpenAccount(owner="o")) for sid in sids])
        await store.finalize([r for r, _ in await store.unpublished(10_000)], [])
        assert await store.reclaim_outbox() is None
        if engine.dialect.name == "postgresql":
            sizes.append(await _outbox_bytes(engine))
    assert await store.unpublished(10_000) == []
    if sizes:
        # Without the VACUUM each round's dead rows stay and the table grows by a round's size.
        assert sizes[-1] <= sizes[0] * 1.5, sizes


async def test_a_role_that_may_not_vacuum_the_outbox_is_told_why(fresh_pg_url: str) -> None:
    role = f"not_owner_{uuid.uuid4().hex[:8]}"
    admin = create_engine(fresh_pg_url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    other = create_engine(make_url(fresh_pg_url).set(username=role).render_as_string(hide_password=False))
    try:
        refused = await WriteStore(other, default_aggregates(), KafkaSettings()).reclaim_outbox()
        assert refused is not None and "outbox" in refused
    finally:
        await other.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await admin.dispose()


async def _outbox_bytes(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_relation_size('outbox')"))).scalar_one())
