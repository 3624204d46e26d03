"""The console's JSON routes over the real broker, projector and PostgreSQL.

Dead letters listed with their record and re-driven one and all; a stream
seen from its topic, the write store and the read model; the live tail of a
topic over a real HTTP server; scopes on every route; `/` on both APIs.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import orjson

from eventfold.auth import new_key
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import AuthSettings, CommandApiSettings
from examples.bank.contracts import ACCOUNT
from examples.bank.projection import ACCOUNTS
from tests.helpers import app_client, read_topic, uid, wait_until
from tests.support.live import query_server, sse_events
from tests.support.projection import (
    account_events,
    caught_up,
    fast_projector,
    produce_envelopes,
    query_client,
    running_projector,
)

# The accounts projection as deployed before the v1 -> v2 upcasters existed.
WITHOUT_UPCASTERS = dataclasses.replace(ACCOUNTS, contract=dataclasses.replace(ACCOUNT, upcasters={}))


async def test_dead_letters_are_listed_with_their_record_and_redriven(make_settings) -> None:
    settings = make_settings(projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    events = account_events(2, 3, seed=41)  # v1 money movements: unknown to WITHOUT_UPCASTERS
    await produce_envelopes(settings.kafka, topic, events)
    async with running_projector(settings, [WITHOUT_UPCASTERS]):
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(settings.db.read_db_url, records, topic), timeout=30)

    async with query_client(settings) as q:
        body = (await q.get("/console/api/dead-letters", params={"name": "accounts"})).json()
        listed = body["dead_letters"]
        assert body["total"] == len(listed) == 4
        first = listed[0]
        assert first["reason"] == "unknown_type" and first["kind"] == "projection"
        assert first["value"]["json"]["stream_id"] == first["key"]
        assert isinstance(first["headers"], list) and first["redrivable"]
        assert (await q.get(f"/console/api/dead-letters/{first['id']}")).json()["id"] == first["id"]
        assert (await q.get("/console/api/dead-letters/999999999")).status_code == 404

        one = await q.post(f"/console/api/dead-letters/{first['id']}/redrive")
        assert one.status_code == 200, one.text
        assert one.json() == {
            "name": "accounts",
            "retried": 1,
            "applied": 1,
            "duplicates": 0,
            "still_failing": 0,
        }
        rest = (await q.post("/console/api/dead-letters/redrive")).json()
        assert rest["results"]["accounts"]["applied"] == 3
        assert (await q.get("/console/api/dead-letters", params={"name": "accounts"})).json()["total"] == 0
        doc = (await q.get(f"/views/accounts/{first['key']}")).json()
        assert doc["version"] == 3


async def test_the_stream_explorer_shows_topic_write_side_and_read_model(
    make_settings, command_client
) -> None:
    settings = make_settings(projector=fast_projector())
    sid = uid("acc")
    async with command_client(settings) as http, running_projector(settings):
        await http.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "ann"}})
        r = await http.post(f"/commands/account/{sid}", json={"type": "Deposit", "data": {"amount": 7}})
        position = r.json()["position"]
        async with query_client(settings) as q:
            got = await q.get(f"/views/accounts/{sid}", params={"wait_for": position, "wait_timeout": 20})
            assert got.status_code == 200
            body = (await q.get(f"/console/api/streams/account/{sid}")).json()
            types = (await q.get("/console/api/stream-types")).json()["stream_types"]
            unknown = await q.get(f"/console/api/streams/nope/{sid}")
    assert [e["version"] for e in body["topic"]["events"]] == [1, 2]
    assert [e["type"] for e in body["topic"]["events"]] == ["AccountOpened", "Deposited"]
    assert all(e["schema_version"] >= 1 and not e["duplicate"] for e in body["topic"]["events"])
    assert body["topic"]["complete"] and body["topic"]["partition"] is not None
    assert body["write_side"]["version"] == 2 and body["write_side"]["unpublished"] == 0
    assert body["documents"]["accounts"]["version"] == 2
    assert {"name": "account", "events": sorted(ACCOUNT.events)} in types
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_stream_type"


async def test_the_live_tail_shows_new_events_filtered(make_settings, command_client) -> None:
    settings = make_settings()
    mine, other = uid("acc"), uid("acc")
    opened = {"type": "OpenAccount", "data": {"owner": "x"}}
    async with (
        command_client(settings) as http,
        query_server(settings) as (url, _app),
        httpx.AsyncClient(base_url=url, timeout=30) as q,
        q.stream("GET", "/console/api/tail/account", params={"stream_id": mine}) as tail,
    ):
        assert tail.status_code == 200
        chunks = tail.aiter_raw()
        raw = b""
        while not any(k == "ready" for k, _, _ in sse_events(raw)):
            raw += await asyncio.wait_for(anext(chunks), 20)
        for sid in (other, mine):
            await http.post(f"/commands/account/{sid}", json=opened)
        await http.post(f"/commands/account/{mine}", json={"type": "Deposit", "data": {"amount": 3}})
        while len([e for e in sse_events(raw) if e[0] == "event"]) < 2:
            raw += await asyncio.wait_for(anext(chunks), 20)
    shown = [d for k, d, _ in sse_events(raw) if k == "event"]
    assert [(d["stream_id"], d["version"], d["type"]) for d in shown] == [
        (mine, 1, "AccountOpened"),
        (mine, 2, "Deposited"),
    ]


async def test_every_console_route_checks_its_scope(make_settings) -> None:
    reader, read_entry = new_key("reader", ["read"])
    admin, admin_entry = new_key("boss", ["admin"])
    keys = orjson.dumps([read_entry.model_dump(mode="json"), admin_entry.model_dump(mode="json")]).decode()
    settings = make_settings(auth=AuthSettings(api_keys=keys))

    def as_(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async with query_client(settings) as q:
        for path in ("/console/api/session", "/console/api/dead-letters", "/console/api/stream-types"):
            assert (await q.get(path)).status_code == 401
            assert (await q.get(path, headers=as_(reader))).status_code == 200
        redrive = await q.post("/console/api/dead-letters/redrive", headers=as_(reader))
        assert redrive.status_code == 403
        assert redrive.headers["content-type"].startswith("application/problem+json")
        assert (await q.post("/console/api/dead-letters/redrive", headers=as_(admin))).status_code == 200
        session = (await q.get("/console/api/session", headers=as_(reader))).json()
        assert session == {"key_id": "reader", "scopes": ["read"]}
        # The page itself is public; its status table only for a caller who may read.
        page = await q.get("/console")
        assert page.status_code == 200 and "Sign in to see the projections" in page.text
        assert "status-table" in (await q.get("/console", headers=as_(reader))).text
        assert reader not in (await q.get("/console", headers=as_(reader))).text


async def test_root_of_both_apis_leads_to_the_console(make_settings) -> None:
    from command_api.bootstrap import create_app
    from tests.support.bank import default_aggregates

    settings = make_settings()
    async with query_client(settings) as q:
        root = await q.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/console"
        page = await q.get("/console")
        assert "<h1>eventfold console</h1>" in page.text and "status-table" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        script = await q.get("/console/static/console.js")
        assert script.status_code == 200 and "sessionStorage" in script.text
    async with app_client(create_app(settings, default_aggregates())) as c:
        assert (await c.get("/", follow_redirects=False)).headers["location"] == "/docs"
    linked = settings.model_copy(
        update={"command_api": CommandApiSettings(console_url="http://127.0.0.1:8001/console")}
    )
    async with app_client(create_app(linked, default_aggregates())) as c:
        assert (await c.get("/", follow_redirects=False)).headers["location"] == (
            "http://127.0.0.1:8001/console"
        )
