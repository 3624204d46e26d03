"""Group commits in flight at once, through the real service on PostgreSQL.

Whatever order concurrent commits finish in, the service lets go of every
per-commit and per-command structure once nothing is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from command_api.bootstrap import create_app
from eventfold.kafka import create_topics
from eventfold.settings import DatabaseSettings
from tests.helpers import app_client, uid, wait_until
from tests.support.bank import default_aggregates

IDLE = {
    "queued": 0,
    "commits_in_flight": 0,
    "idempotency_keys_in_flight": 0,
    "acks_to_finalize": 0,
    "responses_to_save": 0,
    "records_unacknowledged": 0,
    "records_to_publish": 0,
}


async def _send(http: httpx.AsyncClient, sid: str, type_: str, data: dict[str, Any], **headers: str) -> int:
    r = await http.post(f"/commands/account/{sid}", json={"type": type_, "data": data}, headers=headers)
    return r.status_code


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_later_commit_finishing_first_leaves_nothing_behind(
    make_settings, fresh_pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Commit A waits on a row lock while commit B starts, finishes and is acknowledged."""
    settings = make_settings(DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url))
    assert settings.command_api.commit_concurrency >= 2
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    slow, fast = uid("acct"), uid("acct")
    app = create_app(settings, default_aggregates())
    caplog.set_level(logging.ERROR, logger="command_api.service")
    async with app_client(app) as http:
        service = app.state.side.service
        for sid in (slow, fast):
            assert await _send(http, sid, "OpenAccount", {"owner": "G"}) == 200
        await wait_until(lambda: _drained(service), what="the opens to be acknowledged")

        holder = await asyncpg.connect(_dsn(fresh_pg_url))
        watcher = await asyncpg.connect(_dsn(fresh_pg_url))
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM streams WHERE stream_type = 'account' AND stream_id = $1 FOR UPDATE", slow
            )
            first = asyncio.create_task(_send(http, slow, "Deposit", {"amount": 5}))

            async def waiting_on_lock() -> bool:
                n = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
                return bool(n)

            await wait_until(waiting_on_lock, what="commit A to wait on the row lock")
            assert await _send(http, fast, "Deposit", {"amount": 7}) == 200
            # B's events acknowledged and forgotten while A is still in its transaction.
            await wait_until(lambda: _held(service, "records_unacknowledged", 0), what="B to be acknowledged")
            await lock.rollback()
            assert await first == 200
        finally:
            await holder.close()
            await watcher.close()
        await wait_until(lambda: _drained(service), what="every record to be acknowledged")
        assert service.held() == IDLE
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_concurrent_load_returns_every_structure_to_empty(make_settings, fresh_pg_url: str) -> None:
    """32 clients at once on a few streams, some with idempotency keys: nothing stays held."""
    settings = make_settings(DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url))
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    accounts = [uid("acct") for _ in range(8)]
    app = create_app(settings, default_aggregates())
    async with app_client(app) as http:
        service = app.state.side.service
        for sid in accounts:
            assert await _send(http, sid, "OpenAccount", {"owner": "L"}) == 200
        prefix = uid("key")

        async def client(n: int) -> list[int]:
            out = []
            for i in range(10):
                sid = accounts[(n + i) % len(accounts)]
                headers = {"Idempotency-Key": f"{prefix}-{n}-{i}"} if i % 2 else {}
                out.append(await _send(http, sid, "Deposit", {"amount": 1}, **headers))
            return out

        statuses = [s for batch in await asyncio.gather(*(client(n) for n in range(32))) for s in batch]
        assert statuses == [200] * 320
        await wait_until(lambda: _drained(service), what="every record to be acknowledged")
        assert service.held() == IDLE


async def _drained(service: Any) -> bool:
    """Acknowledgements and stored answers trail the responses; wait for them, not the rest."""
    held = service.held()
    return not any(held[k] for k in ("records_unacknowledged", "acks_to_finalize", "responses_to_save"))


async def _held(service: Any, name: str, value: int) -> bool:
    return bool(service.held()[name] == value)


async def test_the_service_vacuums_the_outbox_once_it_cleared_enough_rows(
    make_settings, fresh_pg_url: str
) -> None:
    settings = make_settings(
        DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url),
        command_api={"outbox_vacuum_interval_s": 0.05, "outbox_vacuum_rows": 20},
    )
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    watcher = await asyncpg.connect(_dsn(fresh_pg_url))

    async def vacuums() -> int:
        n = await watcher.fetchval("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
        return int(n or 0)

    app = create_app(settings, default_aggregates())
    try:
        async with app_client(app) as http:
            service = app.state.side.service
            for _ in range(10):
                assert await _send(http, uid("acct"), "OpenAccount", {"owner": "V"}) == 200
            await wait_until(lambda: _drained(service), what="the opens to be cleared from the outbox")
            assert await vacuums() == 0  # 10 rows cleared: fewer than outbox_vacuum_rows
            for _ in range(10):
                assert await _send(http, uid("acct"), "OpenAccount", {"owner": "V"}) == 200
            await wait_until(vacuums, what="the service to vacuum the outbox")
    finally:
        await watcher.close()
