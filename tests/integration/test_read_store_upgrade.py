"""The read migrations keep the framework's tables only; a store the bank's
old migrations (read_0001..read_0003) built keeps its read model.

A fresh store gets no bank tables from Alembic (the projector creates a
projection's tables on start), and a store with bank rows in it upgrades
with its rows, which the projector adopts as the live generation and goes on
from: served without reading the topic from the start.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from eventfold.db import create_engine
from eventfold.migrate import alembic_config, upgrade, upgrade_all
from eventfold.migrations.environment import include_read_object, read_metadata
from eventfold.projection import by_name
from eventfold.settings import DatabaseSettings
from projector import store
from projector.batch import Folded
from projector.tables import CHANGE_SLOTS, view_change_horizons, view_changes
from query_api.feed import end_of
from tests.conftest import create_database, drop_database
from tests.helpers import uid, wait_until
from tests.support.bank import default_projections as projections
from tests.support.projection import fast_projector, query_client, running_projector

PREVIOUS_HEAD = "read_0003"
FRAMEWORK = {"projection_offsets", "projection_status", "projection_failures", "alembic_version_read"}
BANK = {"accounts", "account_transactions"}

# The bank's tables as read_0001..read_0003 left them (a snapshot, like the migrations).
legacy_accounts = sa.table(
    "accounts",
    *(sa.column(c) for c in ("id", "owner", "balance", "status", "version", "opened_at", "updated_at")),
)
legacy_transactions = sa.table(
    "account_transactions",
    *(
        sa.column(c)
        for c in ("account_id", "version", "type", "amount", "balance_after", "occurred_at", "reference")
    ),
)
status = sa.table(
    "projection_status",
    *(sa.column(c) for c in ("projection", "state", "version", "events_applied", "updated_at", "generation")),
)
offsets = sa.table(
    "projection_offsets",
    *(sa.column(c) for c in ("projection", "topic", "partition", "next_offset", "updated_at")),
)


@pytest.fixture(params=["postgres", "sqlite"])
async def bare_db(
    request: pytest.FixtureRequest, pg_admin_url: str, tmp_path: Path
) -> AsyncIterator[DatabaseSettings]:
    """Write and read stores that exist but were never migrated."""
    if request.param == "sqlite":
        yield DatabaseSettings(
            write_db_url=f"sqlite+aiosqlite:///{tmp_path / 'write.db'}",
            read_db_url=f"sqlite+aiosqlite:///{tmp_path / 'read.db'}",
        )
        return
    url = await create_database(pg_admin_url, migrate=False)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)


async def _tables(url: str) -> set[str]:
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _execute(url: str, *statements: Any) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for stmt in statements:
                await conn.execute(stmt)
    finally:
        await engine.dispose()


async def test_a_fresh_store_gets_the_framework_tables_only(bare_db: DatabaseSettings) -> None:
    await upgrade_all(bare_db.write_db_url, bare_db.read_db_url)
    found = await _tables(bare_db.read_db_url)
    assert found >= FRAMEWORK
    assert not found & BANK
    engine = create_engine(bare_db.read_db_url, writer=False)
    try:
        async with engine.connect() as conn:

            def differences(sync: sa.Connection) -> list[Any]:
                ctx = MigrationContext.configure(sync, opts={"include_object": include_read_object})
                return list(compare_metadata(ctx, read_metadata()))

            # The migrations and the framework's table declarations agree.
            assert await conn.run_sync(differences) == []
    finally:
        await engine.dispose()


async def test_bank_tables_an_old_store_has_projected_into_are_kept(bare_db: DatabaseSettings) -> None:
    """Empty tables with offsets stored: the projector has read records into them."""
    await upgrade(bare_db.write_db_url, "write")
    await upgrade(bare_db.read_db_url, "read", PREVIOUS_HEAD)
    assert await _tables(bare_db.read_db_url) >= BANK
    row = {"projection": "accounts", "topic": "bank.account.events", "partition": 0, "next_offset": 3}
    await _execute(bare_db.read_db_url, sa.insert(offsets).values(**row, updated_at=time.time()))
    await upgrade(bare_db.read_db_url, "read")
    assert await _tables(bare_db.read_db_url) >= BANK


async def test_the_downgrade_brings_the_bank_tables_back(bare_db: DatabaseSettings) -> None:
    await upgrade(bare_db.read_db_url, "read")
    assert not await _tables(bare_db.read_db_url) & BANK
    engine = create_engine(bare_db.read_db_url)
    try:
        async with engine.begin() as conn:

            def downgrade(sync: sa.Connection, revision: str) -> None:
                cfg = alembic_config("read")
                cfg.attributes["connection"] = sync
                command.downgrade(cfg, revision)

            await conn.run_sync(downgrade, PREVIOUS_HEAD)
            assert set(await conn.run_sync(lambda s: sa.inspect(s).get_table_names())) >= BANK
            await conn.run_sync(downgrade, "base")
    finally:
        await engine.dispose()
    assert not await _tables(bare_db.read_db_url) & (BANK | FRAMEWORK - {"alembic_version_read"})


async def test_an_old_store_keeps_its_read_model_and_the_projector_goes_on_from_it(
    command_client, make_settings, bare_db: DatabaseSettings
) -> None:
    await upgrade(bare_db.write_db_url, "write")
    await upgrade(bare_db.read_db_url, "read", PREVIOUS_HEAD)
    settings = make_settings(bare_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    legacy = uid("legacy")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # What an earlier release's projector left: rows that no record in this
    # test's topic produces, so they are served only if nothing rebuilt them.
    await _execute(
        bare_db.read_db_url,
        sa.insert(legacy_accounts).values(
            id=legacy, owner="Old", balance=42, status="open", version=2, opened_at=at, updated_at=at
        ),
        sa.insert(legacy_transactions).values(
            account_id=legacy,
            version=2,
            type="deposit",
            amount=42,
            balance_after=42,
            occurred_at=at,
            reference="r",
        ),
        sa.insert(status).values(
            projection="accounts",
            state="live",
            version=by_name(projections(), "accounts").version,
            events_applied=2,
            updated_at=time.time(),
            generation=1,
        ),
        sa.insert(offsets).values(
            [
                {
                    "projection": "accounts",
                    "topic": topic,
                    "partition": p,
                    "next_offset": 0,
                    "updated_at": 0.0,
                }
                for p in range(settings.kafka.partitions)
            ]
        ),
    )
    await upgrade_all(bare_db.write_db_url, bare_db.read_db_url)
    assert await _tables(bare_db.read_db_url) >= BANK
    fresh = uid("acct")
    async with command_client(settings) as cmd, running_projector(settings), query_client(settings) as q:
        r = await cmd.post(
            f"/commands/account/{fresh}", json={"type": "OpenAccount", "data": {"owner": "New"}}
        )
        assert r.status_code == 200, r.text
        r = await q.get(f"/accounts/{fresh}", params={"wait_for": r.json()["position"], "wait_timeout": 20})
        assert r.status_code == 200, r.text
        r = await q.get(f"/accounts/{legacy}")
        assert r.status_code == 200, r.text
        assert (r.json()["owner"], r.json()["balance"], r.json()["version"]) == ("Old", 42, 2)
        r = await q.get(f"/accounts/{legacy}/transactions")
        assert [(t["version"], t["amount"], t["reference"]) for t in r.json()["items"]] == [(2, 42, "r")]

        async def counted() -> Any:
            body = (await q.get("/projections")).json()["projections"]
            [accounts] = [p for p in body if p["name"] == "accounts"]
            return accounts if accounts["events_applied"] == 3 else None

        accounts = await wait_until(counted, what="the new event counted on top of the old ones")
        assert (accounts["state"], accounts["generation"]) == ("live", 1)


async def test_a_subscriber_at_a_position_of_the_old_change_feed_is_reset_after_the_upgrade(
    bare_db: DatabaseSettings,
) -> None:
    """The feed went from a row per document to a row per batch; old positions must not skip changes."""
    url = bare_db.read_db_url
    await upgrade(url, "read", "read_0006")
    old = {"projection": "accounts", "version": 1, "topic": "t", "partition": 0, "offset": 0}
    horizons = sa.table("view_change_horizons", sa.column("projection"), sa.column("seq"))
    columns = ("seq", "projection", "doc_id", "version", "topic", "partition", "offset", "committed_at")
    legacy_feed = sa.table("view_changes", *(sa.column(c) for c in columns))
    await _execute(
        url,
        sa.insert(horizons).values(projection="accounts", seq=150_000),
        sa.insert(legacy_feed).values(seq=200_001, doc_id="a", committed_at=time.time(), **old),
        sa.insert(legacy_feed).values(seq=200_002, doc_id="b", committed_at=time.time(), **old),
    )
    await upgrade(url, "read")

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            folded = Folded(docs={"c": {"id": "c", "version": 4}}, positions={"c": ("t", 0, 9)})
            await store.record_changes(conn, "accounts", folded)
        async with engine.connect() as conn:
            horizon = (await conn.execute(sa.select(view_change_horizons.c.seq))).scalar_one()
            [(seq, changes)] = (
                await conn.execute(sa.select(view_changes.c.seq, view_changes.c.changes))
            ).all()
    finally:
        await engine.dispose()
    # Every old position lies before the horizon's end (so resuming there is a reset),
    # and the first new position after it.
    assert end_of(horizon) > 200_002
    assert seq * CHANGE_SLOTS > end_of(horizon)
    assert orjson.loads(changes) == [["c", 4]]
