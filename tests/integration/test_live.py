"""Live read models over the real broker, projector, database and a real HTTP server.

Server-Sent Events and the WebSocket, on PostgreSQL (woken by NOTIFY) and
SQLite (polling): a document's state then its changes in order under
concurrent commands; resuming after a dropped connection with no gap and no
repeat; filtered subscriptions; two query API processes each delivering
every change; a reset when a rebuild swaps the tables in; authentication,
scopes and expiry; a slow client cut off while a fast one keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import websockets
from sqlalchemy import select

from eventfold.client import EventfoldClient, LiveChange, ProblemError
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import AuthSettings, DatabaseSettings, QueryApiSettings, Settings
from examples.bank.projection import ACCOUNTS
from projector.rebuild import rebuild_projection
from projector.tables import view_changes
from tests.helpers import uid, wait_until
from tests.support.live import dechunk, query_server, sse_events
from tests.support.projection import account_events, fast_projector, produce_envelopes, running_projector


class Bank:
    def __init__(self, http: httpx.AsyncClient, query_url: str | None = None) -> None:
        self.http, self.query_url = http, query_url

    async def send(self, sid: str, type_: str, **data: Any) -> dict[str, Any]:
        r = await self.http.post(f"/commands/account/{sid}", json={"type": type_, "data": data})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def open(self, owner: str = "ann") -> str:
        """A new account, once the read model has it (when a query API is at hand)."""
        sid = uid("acc")
        position = (await self.send(sid, "OpenAccount", owner=owner))["position"]
        if self.query_url is not None:
            async with httpx.AsyncClient(base_url=self.query_url) as q:
                r = await q.get(f"/views/accounts/{sid}", params={"wait_for": position, "wait_timeout": 20})
                assert r.status_code == 200, r.text
        return sid


async def collect(events: AsyncIterator[LiveChange], until: Any, timeout: float = 30) -> list[LiveChange]:
    """Events from `events` until `until(event)` holds (the last one included)."""
    got: list[LiveChange] = []

    async def run() -> None:
        async for e in events:
            got.append(e)
            if until(e):
                return

    await asyncio.wait_for(run(), timeout)
    return got


def versions(events: list[LiveChange]) -> list[int]:
    return [int(e.document["version"]) for e in events if e.document is not None]


@contextlib.asynccontextmanager
async def stack(
    command_client: Any, settings: Settings, *, send_buffer: int | None = None
) -> AsyncIterator[tuple[Bank, str, Any]]:
    async with (
        command_client(settings) as http,
        running_projector(settings),
        query_server(settings, send_buffer=send_buffer) as (url, app),
    ):
        yield Bank(http, url), url, app


def live_settings(make_settings: Any, db: DatabaseSettings, **query: Any) -> Settings:
    return make_settings(db, projector=fast_projector(), query_api=QueryApiSettings(**query))


async def test_a_document_is_sent_then_every_change_in_order_under_concurrent_commands(
    command_client: Any, make_settings: Any, own_db: DatabaseSettings
) -> None:
    settings = live_settings(make_settings, own_db)
    async with stack(command_client, settings) as (bank, url, _):
        sid = await bank.open()
        async with EventfoldClient(url, url) as ef:
            live = ef.subscribe("accounts", sid)
            first = await asyncio.wait_for(anext(live), 30)
            assert first.event == "state" and first.document is not None
            assert first.document["owner"] == "ann"
            n = 25
            results = await asyncio.gather(*(bank.send(sid, "Deposit", amount=i + 1) for i in range(n)))
            final = max(r["version"] for r in results)
            rest = await collect(live, lambda e: e.document and e.document["version"] == final)
            await live.aclose()
        seen = versions([first, *rest])
        assert seen == sorted(set(seen)), seen  # in order, each state once
        assert rest[-1].document is not None and rest[-1].document["balance"] == n * (n + 1) // 2
        assert all(e.event == "change" for e in rest)
        assert len({e.id for e in [first, *rest]}) == len(rest) + 1


async def test_resuming_after_a_dropped_connection_has_no_gap_and_no_repeat(
    command_client: Any, make_settings: Any, own_db: DatabaseSettings
) -> None:
    settings = live_settings(make_settings, own_db)
    async with stack(command_client, settings) as (bank, url, _):
        sid = await bank.open()
        async with EventfoldClient(url, url) as ef:
            live = ef.subscribe("accounts", sid)
            state = await asyncio.wait_for(anext(live), 30)
            v2 = (await bank.send(sid, "Deposit", amount=5))["version"]
            [change] = await collect(live, lambda e: e.document["version"] == v2)
            await live.aclose()  # the connection drops
            # Changes while nobody listens...
            await bank.send(sid, "Deposit", amount=7)
            v4 = (await bank.send(sid, "Withdraw", amount=2))["version"]
            # ... and one after resuming from the last id seen.
            resumed = ef.subscribe("accounts", sid, since=change.id)
            got = await collect(resumed, lambda e: e.document["version"] == v4)
            v5 = (await bank.send(sid, "Deposit", amount=1))["version"]
            got += await collect(resumed, lambda e: e.document["version"] == v5)
            await resumed.aclose()
            # Resuming from the newest id sends nothing until the next change.
            again = ef.subscribe("accounts", sid, since=got[-1].id)
            v6 = (await bank.send(sid, "Deposit", amount=1))["version"]
            [last] = await collect(again, lambda e: True)
            await again.aclose()
        assert state.event == "state" and change.event == "change"
        resumed_versions = versions(got)
        assert resumed_versions[0] > v2 and resumed_versions[-1] == v5, resumed_versions
        assert resumed_versions == sorted(set(resumed_versions))
        assert got[-1].document is not None and got[-1].document["balance"] == 5 + 7 - 2 + 1
        assert last.document is not None and last.document["version"] == v6


async def test_a_filtered_subscription_gets_only_the_matching_documents(
    command_client: Any, make_settings: Any, own_db: DatabaseSettings
) -> None:
    settings = live_settings(make_settings, own_db)
    owner = uid("owner")
    async with stack(command_client, settings) as (bank, url, _):
        async with EventfoldClient(url, url) as ef:
            live = ef.subscribe("accounts", filters={"owner": owner})
            ready = await asyncio.wait_for(anext(live), 30)
            assert ready.event == "ready"
            mine = [await bank.open(owner) for _ in range(3)]
            await bank.open("somebody-else")
            await bank.send(mine[0], "Deposit", amount=3)
            got = await collect(
                live, lambda e: e.doc_id == mine[0] and e.document and e.document["balance"] == 3
            )
            await live.aclose()
        assert {e.doc_id for e in got} == set(mine)
        assert all(e.document and e.document["owner"] == owner for e in got)


async def _feed_rows(url: str) -> list[list[Any]]:
    """What each change-feed row lists: [doc_id, version] per document its batch changed."""
    engine = create_engine(url, writer=False)
    try:
        async with engine.connect() as conn:
            c = view_changes.c
            found = await conn.execute(select(c.changes).where(c.projection == "accounts").order_by(c.seq))
            return [orjson.loads(changes) for (changes,) in found]
    finally:
        await engine.dispose()


async def test_every_document_of_one_batch_reaches_a_filtered_subscriber_who_can_resume_inside_it(
    make_settings: Any, own_db: DatabaseSettings
) -> None:
    """One feed row lists every document of its batch; each has its own position."""
    settings = live_settings(make_settings, own_db)
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    opened = account_events(60, 1, seed=71)
    ids = {e.stream_id for e in opened}
    async with query_server(settings) as (url, _), EventfoldClient(url, url) as ef:
        live = ef.subscribe("accounts", filters={"status": "open"})
        assert (await asyncio.wait_for(anext(live), 30)).event == "ready"
        # All in Kafka before the projector starts: its batches hold many documents each.
        await produce_envelopes(settings.kafka, topic, opened)
        seen: set[str] = set()

        def all_seen(e: LiveChange) -> bool:
            seen.add(e.doc_id or "")
            return seen >= ids

        async with running_projector(settings, [ACCOUNTS]):
            got = await collect(live, all_seen)
            await live.aclose()
            rows = await _feed_rows(own_db.read_db_url)
            # Resuming from inside a batch sends the rest of it, and nothing twice.
            resumed = ef.subscribe("accounts", filters={"status": "open"}, since=got[9].id)
            rest = await collect(resumed, lambda e: e.doc_id == got[-1].doc_id)
            await resumed.aclose()
    assert max(len(r) for r in rows) > 1, rows
    assert sorted(d for r in rows for d, _ in r) == sorted(ids)
    assert [e.event for e in got] == ["change"] * len(ids)
    assert sorted(e.doc_id or "" for e in got) == sorted(ids)
    assert len({e.id for e in got}) == len(ids)
    assert [e.doc_id for e in rest] == [e.doc_id for e in got[10:]]


async def test_two_query_api_processes_each_deliver_every_change(
    command_client: Any, make_settings: Any, own_db: DatabaseSettings
) -> None:
    settings = live_settings(make_settings, own_db)
    async with stack(command_client, settings) as (bank, url_a, _), query_server(settings) as (url_b, _b):
        sid = await bank.open()
        async with EventfoldClient(url_a, url_a) as a, EventfoldClient(url_b, url_b) as b:
            live_a, live_b = a.subscribe("accounts", sid), b.subscribe("accounts", sid)
            await asyncio.wait_for(asyncio.gather(anext(live_a), anext(live_b)), 30)
            final = 0
            for i in range(5):
                final = (await bank.send(sid, "Deposit", amount=i + 1))["version"]
            got_a, got_b = await asyncio.gather(
                collect(live_a, lambda e: e.document["version"] == final),
                collect(live_b, lambda e: e.document["version"] == final),
            )
            await live_a.aclose()
            await live_b.aclose()
        for got in (got_a, got_b):
            assert versions(got) == sorted(set(versions(got))) and versions(got)[-1] == final
            assert got[-1].document is not None and got[-1].document["balance"] == 15


async def test_a_rebuild_swap_sends_a_reset_with_the_current_state(
    command_client: Any, make_settings: Any, pg_url: str
) -> None:
    settings = live_settings(make_settings, DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url))
    async with stack(command_client, settings) as (bank, url, _):
        sid = await bank.open()
        await bank.send(sid, "Deposit", amount=9)
        async with EventfoldClient(url, url) as ef:
            live = ef.subscribe("accounts", sid)
            state = await asyncio.wait_for(anext(live), 30)
            engine = create_engine(settings.db.read_db_url)
            try:
                await rebuild_projection(settings, ACCOUNTS, engine)
            finally:
                await engine.dispose()
            got = await collect(live, lambda e: e.event == "reset")
            await live.aclose()
        # Before it, at most the deposit (if the state was read before it was applied).
        *before, reset = got
        assert [e.document["version"] for e in [state, *before] if e.document] in ([1, 2], [2])
        assert reset.document is not None and reset.document["balance"] == 9
        assert reset.document["version"] == 2


def keyed(
    make_settings: Any, pg_url: str, *, scopes: list[str], expires_in_s: float | None = None
) -> tuple[Settings, str]:
    from eventfold.auth import new_key

    expires = datetime.now(UTC) + timedelta(seconds=expires_in_s) if expires_in_s else None
    token, entry = new_key(uid("k"), scopes, expires)
    auth = AuthSettings(api_keys=orjson.dumps([entry.model_dump(mode="json")]).decode())
    db = DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url)
    return make_settings(db, projector=fast_projector(), auth=auth), token


async def test_live_routes_check_the_token_and_its_scope_and_end_when_it_expires(
    command_client: Any, make_settings: Any, pg_url: str
) -> None:
    settings, writer = keyed(make_settings, pg_url, scopes=["commands:write"])
    expiring_settings, expiring = keyed(make_settings, pg_url, scopes=["read"], expires_in_s=3)
    open_settings = make_settings(
        DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url), projector=fast_projector()
    )
    async with command_client(open_settings) as http, running_projector(open_settings):
        sid = await Bank(http).open()
        async with query_server(settings) as (url, _):
            async with httpx.AsyncClient(base_url=url) as raw:
                r = await raw.get(f"/views/accounts/{sid}/live")
                assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
                r = await raw.get(
                    f"/views/accounts/{sid}/live", headers={"Authorization": f"Bearer {writer}"}
                )
                assert r.status_code == 403, r.text
            ws_url = url.replace("http", "ws") + "/ws"
            async with websockets.connect(ws_url) as ws:
                await ws.send(orjson.dumps({"subscribe": f"accounts/{sid}"}).decode())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
            async with websockets.connect(ws_url, subprotocols=["eventfold", f"bearer.{writer}"]) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        async with query_server(expiring_settings) as (url, _):
            async with EventfoldClient(url, url, token=expiring) as ef:
                live = ef.subscribe("accounts", sid)
                assert (await asyncio.wait_for(anext(live), 30)).event == "state"
                with pytest.raises(ProblemError) as refused:
                    while True:  # the opening may still arrive as a change first
                        assert (await asyncio.wait_for(anext(live), 30)).event == "change"
                assert refused.value.status == 401 and refused.value.code == "token_expired"
            ws_url = url.replace("http", "ws") + "/ws"
            async with websockets.connect(ws_url, subprotocols=["eventfold", f"bearer.{expiring}"]) as ws:
                assert ws.subprotocol == "eventfold"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (4401,)


async def test_one_websocket_holds_many_subscriptions_each_acknowledged_and_resumable(
    command_client: Any, make_settings: Any, own_db: DatabaseSettings
) -> None:
    settings = live_settings(make_settings, own_db)
    owner = uid("owner")
    async with stack(command_client, settings) as (bank, url, _):
        a, b = await bank.open(owner), await bank.open()
        ws_url = url.replace("http", "ws") + "/ws"
        async with websockets.connect(ws_url, subprotocols=["eventfold", "bearer.none"]) as ws:

            async def until(pred: Any) -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = []
                while True:
                    msg = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                    if "heartbeat" in msg:
                        continue
                    got.append(msg)
                    if pred(msg):
                        return got

            await ws.send(orjson.dumps({"subscribe": f"accounts/{a}"}).decode())
            first = await until(lambda m: m.get("event") == "state")
            assert first[0] == {"ack": f"accounts/{a}"}
            await ws.send(orjson.dumps({"subscribe": f"accounts?owner={owner}"}).decode())
            await until(lambda m: m.get("event") == "ready")
            await ws.send(orjson.dumps({"subscribe": "nosuch/x"}).decode())
            [error] = await until(lambda m: "error" in m)
            assert error["error"]["code"] == "unknown_projection" and error["subscription"] == "nosuch/x"
            v = (await bank.send(a, "Deposit", amount=4))["version"]
            got = await until(lambda m: m.get("event") == "change" and m["subscription"] == f"accounts/{a}")
            assert got[-1]["document"]["version"] == v
            await bank.send(b, "Deposit", amount=1)  # not subscribed to b: nothing for it
            await ws.send(orjson.dumps({"unsubscribe": f"accounts/{a}"}).decode())
            await until(lambda m: m.get("unsubscribed") == f"accounts/{a}")
            resume_from = got[-1]["id"]
        v2 = (await bank.send(a, "Deposit", amount=6))["version"]
        async with websockets.connect(ws_url) as ws:
            await ws.send(orjson.dumps({"token": "unused: authentication is off here"}).decode())
            await ws.send(orjson.dumps({"subscribe": f"accounts/{a}", "since": resume_from}).decode())
            msgs = []
            while not msgs or msgs[-1].get("event") != "change":
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if "heartbeat" not in msg:
                    msgs.append(msg)
        assert msgs[0] == {"ack": f"accounts/{a}"}
        assert [m["document"]["version"] for m in msgs[1:]] == [v2]


async def test_a_client_that_stops_reading_is_dropped_while_another_keeps_up(
    command_client: Any, make_settings: Any, pg_url: str
) -> None:
    db = DatabaseSettings(write_db_url=pg_url, read_db_url=pg_url)
    settings = live_settings(make_settings, db, live_buffer=20, live_heartbeat_s=60)
    owner = "x" * 190  # large documents fill the socket buffers sooner
    async with stack(command_client, settings, send_buffer=4096) as (bank, url, app):
        sid = await bank.open(owner)
        port = int(url.rsplit(":", 1)[1])
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(slow, ("127.0.0.1", port))
        await loop.sock_sendall(
            slow, f"GET /views/accounts/live?owner={owner} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        feed = app.state.side.feed.feeds["accounts"]

        async def subscribed() -> bool:
            return bool(feed.filtered)

        await wait_until(subscribed, timeout=10, what="the slow client to subscribe")
        [slow_sub] = list(feed.filtered)
        async with EventfoldClient(url, url) as ef:
            fast = ef.subscribe("accounts", sid)
            await asyncio.wait_for(anext(fast), 30)
            version = 1
            for _ in range(2000):
                version = (await bank.send(sid, "Deposit", amount=1))["version"]
                if slow_sub.mailbox.closed is not None:
                    break
            assert slow_sub.mailbox.closed is not None and slow_sub.mailbox.closed.startswith("slow consumer")
            # The fast client has everything, up to the last change.
            await collect(fast, lambda e: e.document["version"] == version)
            await fast.aclose()
        # The slow client reads at last: what it was sent, then the reason it was dropped.
        raw = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            while chunk := await asyncio.wait_for(loop.sock_recv(slow, 65536), 20):
                raw += chunk
        slow.close()
        kinds = [k for k, _, _ in sse_events(dechunk(raw.split(b"\r\n\r\n", 1)[1]))]
        assert kinds[0] == "ready" and kinds[-1] == "dropped", kinds[-3:]
        assert "change" in kinds
