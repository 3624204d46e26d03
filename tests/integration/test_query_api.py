"""The query API's contract: problems, ETags, cursors, wait_for bounds, health."""

from __future__ import annotations

from eventfold.settings import DatabaseSettings
from schemas.position import Position
from tests.helpers import uid
from tests.support.projection import fast_projector, query_client, running_projector


async def test_query_api_answers_and_refuses_as_documented(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    sid = uid("acct")
    async with command_client(settings) as cmd, running_projector(settings), query_client(settings) as q:
        r = await cmd.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "Q"}})
        pos = r.json()["position"]
        r = await q.get(f"/accounts/{sid}", params={"wait_for": pos, "wait_timeout": 10})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert r.headers["etag"] == '"1"'
        r = await q.get(f"/accounts/{sid}", headers={"If-None-Match": '"1"'})
        assert r.status_code == 304 and r.headers["etag"] == '"1"'
        r = await q.get(f"/accounts/{sid}", headers={"If-None-Match": '"0"'})
        assert r.status_code == 200

        def problem(r, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
            assert r.status_code == status, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == code

        problem(await q.get(f"/accounts/{uid('none')}"), 404, "account_not_found")
        problem(await q.get(f"/accounts/{uid('none')}/transactions"), 404, "account_not_found")
        problem(await q.get("/accounts", params={"cursor": "garbage!"}), 400, "invalid_cursor")
        tx_cursor = (await q.get("/accounts", params={"limit": 1})).json()["next_cursor"]
        if tx_cursor:  # a cursor of one listing is refused by another
            problem(
                await q.get(f"/accounts/{sid}/transactions", params={"cursor": tx_cursor}),
                400,
                "invalid_cursor",
            )
        problem(await q.get("/accounts", params={"limit": 0}), 422, "invalid_request")
        problem(await q.get("/accounts", params={"limit": 501}), 422, "invalid_request")
        problem(await q.get(f"/accounts/{sid}", params={"wait_for": "nonsense"}), 400, "invalid_position")
        other = Position("some.other.topic", 0, 0).token()
        problem(await q.get(f"/accounts/{sid}", params={"wait_for": other}), 400, "invalid_position")
        far = Position(topic, 0, 10**9).token()
        problem(
            await q.get(f"/accounts/{sid}", params={"wait_for": far, "wait_timeout": 31}),
            422,
            "invalid_wait_timeout",
        )
        problem(
            await q.get("/accounts", params={"wait_for": far, "wait_timeout": 0.2}),
            504,
            "projection_lagging",
        )
        assert (await q.get("/healthz")).json() == {"status": "ok"}
        assert (await q.get("/readyz")).status_code == 200
        assert (await q.get("/docs")).status_code == 200
        spec = (await q.get("/openapi.json")).json()
        for path, ops in spec["paths"].items():
            for op in ops.values():
                assert op.get("description"), f"{path} has no docstring"
        body = (await q.get("/projections")).json()["projections"]
        [accounts] = [p for p in body if p["name"] == "accounts"]
        assert accounts["name"] == "accounts" and accounts["state"] == "live"
        assert len(accounts["partitions"]) == settings.kafka.partitions
        assert all(p["lag"] is not None and p["lag"] >= 0 for p in accounts["partitions"])
        assert accounts["last_event_at"] is not None


async def test_reads_survive_connections_the_server_dropped(
    command_client, make_settings, fresh_pg_url: str
) -> None:
    """The GET pool skips the pre-ping; a connection killed under it is retried once, unseen."""
    import asyncio

    import asyncpg

    from eventfold.db import async_url

    settings = make_settings(
        DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url), projector=fast_projector()
    )
    sid = uid("acct")
    async with command_client(settings) as cmd, running_projector(settings), query_client(settings) as q:
        r = await cmd.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "K"}})
        r = await q.get(f"/accounts/{sid}", params={"wait_for": r.json()["position"], "wait_timeout": 10})
        assert r.status_code == 200
        # Fill the pool with several connections, each last used for an account read.
        for r in await asyncio.gather(*(q.get(f"/accounts/{sid}") for _ in range(8))):
            assert r.status_code == 200
        dsn = async_url(fresh_pg_url).replace("postgresql+asyncpg://", "postgresql://")
        admin = await asyncpg.connect(dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state = 'idle' AND query LIKE 'SELECT accounts.%'"
            )
        finally:
            await admin.close()
        assert killed >= 1
        for r in await asyncio.gather(*(q.get(f"/accounts/{sid}") for _ in range(8))):
            assert r.status_code == 200, r.text
            assert r.json()["id"] == sid
