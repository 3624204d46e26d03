"""The generic views under /views: documents, filtered pages and child rows of any projection.

Each runs on PostgreSQL and SQLite with the real broker, the projector
runtime and the query API, for the bank's `accounts` projection and for the
`test_counters` projection declared only in the tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from sqlalchemy import event, inspect

from eventfold.db import create_engine
from eventfold.settings import DatabaseSettings
from examples.bank.projection import ACCOUNTS
from projector.rebuild import rebuild_projection, stored_generation
from schemas.position import Position
from tests.helpers import uid
from tests.support.counter import COUNTERS, metadata, with_counter
from tests.support.projection import fast_projector, query_client, running_projector


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status
    return body


async def pages(q: httpx.AsyncClient, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following `next_cursor` to the end."""
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        r = await q.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 50, "the listing never ends"


class Commands:
    def __init__(self, http: httpx.AsyncClient, stream_type: str) -> None:
        self.http, self.stream_type = http, stream_type
        self.last: dict[str, str] = {}  # the position of each stream's last command

    async def send(self, sid: str, type_: str, **data: Any) -> str:
        r = await self.http.post(f"/commands/{self.stream_type}/{sid}", json={"type": type_, "data": data})
        assert r.status_code == 200, r.text
        self.last[sid] = pos = r.json()["position"]
        return pos


async def caught_up(q: httpx.AsyncClient, view: str, cmds: Commands) -> dict[str, dict[str, Any]]:
    """Each document, read once the projection applied that stream's last command."""
    docs = {}
    for sid, pos in cmds.last.items():
        r = await q.get(f"/views/{view}/{sid}", params={"wait_for": pos, "wait_timeout": 10})
        assert r.status_code == 200, r.text
        docs[sid] = r.json()
    return docs


async def test_account_views(command_client, make_settings, own_db: DatabaseSettings) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    async with command_client(settings) as http, running_projector(settings), query_client(settings) as q:
        cmds = Commands(http, "account")
        ann = [uid("ann") for _ in range(3)]
        bob = [uid("bob") for _ in range(2)]
        for sid in ann:
            await cmds.send(sid, "OpenAccount", owner="ann")
        for sid in bob:
            await cmds.send(sid, "OpenAccount", owner="bob")
        for i in range(5):
            await cmds.send(ann[0], "Deposit", amount=10 * (i + 1), reference=f"r{i}")
        await cmds.send(ann[2], "CloseAccount")
        docs = await caught_up(q, "accounts", cmds)

        # A document is every column, JSON-typed, and reads as the hand-written route does.
        doc = docs[ann[0]]
        assert doc == (await q.get(f"/accounts/{ann[0]}")).json()
        assert set(doc) == {c.name for c in ACCOUNTS.doc_table.columns}
        assert doc["balance"] == 150 and doc["version"] == 6 and doc["owner"] == "ann"
        assert type(doc["balance"]) is int and type(doc["version"]) is int
        assert datetime.fromisoformat(doc["opened_at"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert docs[ann[2]]["status"] == "closed"

        # Its ETag is its version.
        r = await q.get(f"/views/accounts/{ann[0]}")
        assert r.headers["etag"] == '"6"'
        r = await q.get(f"/views/accounts/{ann[0]}", headers={"If-None-Match": '"6"'})
        assert r.status_code == 304 and r.headers["etag"] == '"6"' and r.content == b""
        r = await q.get(f"/views/accounts/{ann[0]}", headers={"If-None-Match": '"5"'})
        assert r.status_code == 200 and r.json() == doc

        # Pages in id order, across pages, each id once.
        got = await pages(q, "/views/accounts", limit=2)
        assert [len(p) for p in got] == [2, 2, 1]
        assert [d["id"] for p in got for d in p] == sorted(ann + bob)
        assert {d["id"]: d for p in got for d in p} == docs
        got = await pages(q, "/views/accounts", owner="ann", limit=2)
        assert [[d["id"] for d in p] for p in got] == [sorted(ann)[:2], sorted(ann)[2:]]
        got = await pages(q, "/views/accounts", status="closed")
        assert [d["id"] for p in got for d in p] == [ann[2]]
        got = await pages(q, "/views/accounts", owner="ann", status="open", limit=1)
        assert [d["id"] for p in got for d in p] == sorted(ann[:2])
        assert await pages(q, "/views/accounts", owner="nobody") == [[]]

        # Child rows in version order, across pages; a document without any has an empty page.
        got = await pages(q, f"/views/accounts/{ann[0]}/account_transactions", limit=2)
        assert [len(p) for p in got] == [2, 2, 1]
        rows = [row for p in got for row in p]
        assert [row["version"] for row in rows] == [2, 3, 4, 5, 6]
        assert [row["balance_after"] for row in rows] == [10, 30, 60, 100, 150]
        assert rows == (await q.get(f"/accounts/{ann[0]}/transactions")).json()["items"]
        assert await pages(q, f"/views/accounts/{bob[0]}/account_transactions") == [[]]

        # What is refused, as problem+json.
        body = problem(await q.get("/views/accounts", params={"balance": 0}), 400, "unknown_filter")
        assert body["allowed_filters"] == ["owner", "status"] and "owner, status" in body["detail"]
        problem(await q.get("/views/accounts", params={"ownr": "ann"}), 400, "unknown_filter")
        problem(await q.get("/views/accounts", params={"status": "x" * 21}), 422, "invalid_request")
        problem(await q.get("/views/accounts", params={"limit": 0}), 422, "invalid_request")
        problem(await q.get("/views/accounts", params={"limit": 501}), 422, "invalid_request")
        problem(await q.get(f"/views/accounts/{uid('none')}"), 404, "document_not_found")

        # The document route reads its parameters itself; its child route and the
        # bank's own route are served by FastAPI. They refuse the same input alike.
        cases: list[tuple[dict[str, str], str, list[str]]] = [
            ({"wait_timeout": "0"}, ann[0], ["query", "wait_timeout"]),
            ({"wait_timeout": "soon"}, ann[0], ["query", "wait_timeout"]),
            ({"wait_for": "x" * 513}, ann[0], ["query", "wait_for"]),
            ({}, "bad%20id", ["path", "id"]),
        ]
        for params, doc_id, loc in cases:
            ours = problem(await q.get(f"/views/accounts/{doc_id}", params=params), 422, "invalid_request")
            child = f"/views/accounts/{doc_id}/account_transactions"
            theirs = problem(await q.get(child, params=params), 422, "invalid_request")
            assert [e["loc"] for e in ours["errors"]] == [loc] and ours["errors"] == theirs["errors"]
        long_tag = {"If-None-Match": '"' + "9" * 300 + '"'}
        ours = problem(await q.get(f"/views/accounts/{ann[0]}", headers=long_tag), 422, "invalid_request")
        theirs = problem(await q.get(f"/accounts/{ann[0]}", headers=long_tag), 422, "invalid_request")
        assert [e["loc"] for e in ours["errors"]] == [["header", "if-none-match"]]
        assert ours["errors"] == theirs["errors"]
        too_long = {"wait_for": docs[ann[0]]["id"], "wait_timeout": "31"}
        problem(await q.get(f"/views/accounts/{ann[0]}", params=too_long), 422, "invalid_wait_timeout")
        bad_position = {"wait_for": "nonsense"}
        problem(await q.get(f"/views/accounts/{ann[0]}", params=bad_position), 400, "invalid_position")
        r = await q.get(f"/views/accounts/{ann[0]}", params={"wait_for": cmds.last[ann[0]]})
        assert r.status_code == 200 and r.json() == doc
        problem(await q.get(f"/views/accounts/{uid('none')}/account_transactions"), 404, "document_not_found")
        problem(await q.get(f"/views/accounts/{ann[0]}/nothing"), 404, "view_not_found")
        problem(await q.get("/views/nothing"), 404, "view_not_found")
        problem(await q.get("/views/nothing/x"), 404, "view_not_found")
        problem(await q.get("/views/accounts", params={"cursor": "garbage!"}), 400, "invalid_cursor")
        list_cursor = (await q.get("/views/accounts", params={"limit": 1})).json()["next_cursor"]
        child_cursor = (
            await q.get(f"/views/accounts/{ann[0]}/account_transactions", params={"limit": 1})
        ).json()["next_cursor"]
        assert list_cursor and child_cursor
        for path, token in (
            (f"/views/accounts/{ann[0]}/account_transactions", list_cursor),
            (f"/views/accounts/{ann[1]}/account_transactions", child_cursor),  # another document's
            ("/views/accounts", child_cursor),
        ):
            problem(await q.get(path, params={"cursor": token}), 400, "invalid_cursor")

        # Read-your-writes on the listing and the child rows.
        pos = await cmds.send(ann[1], "Deposit", amount=7, reference="ryw")
        r = await q.get(f"/views/accounts/{ann[1]}/account_transactions", params={"wait_for": pos})
        assert [(row["version"], row["amount"]) for row in r.json()["items"]] == [(2, 7)]
        cat = uid("cat")
        pos = await cmds.send(cat, "OpenAccount", owner="cat")
        r = await q.get("/views/accounts", params={"owner": "cat", "wait_for": pos})
        assert [d["id"] for d in r.json()["items"]] == [cat]
        far = Position(topic, 0, 10**9).token()
        for path in ("/views/accounts", f"/views/accounts/{ann[0]}/account_transactions"):
            r = await q.get(path, params={"wait_for": far, "wait_timeout": 0.2})
            problem(r, 504, "projection_lagging")
        problem(await q.get(f"/views/accounts/{ann[0]}", params={"wait_for": "x"}), 400, "invalid_position")
        other = Position("some.other.topic", 0, 0).token()
        problem(await q.get("/views/accounts", params={"wait_for": other}), 400, "invalid_position")


async def test_counter_views(command_client, make_settings, own_db: DatabaseSettings) -> None:
    """A projection declared only in the tests gets the same views, typed from its own tables."""
    settings = make_settings(own_db, projector=fast_projector())
    engine = create_engine(own_db.read_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()
    async with (
        command_client(settings, with_counter()) as http,
        running_projector(settings, [COUNTERS]),
        query_client(settings, [COUNTERS]) as q,
    ):
        cmds = Commands(http, "counter")
        c = sorted(uid("ctr") for _ in range(3))
        for by in (5, 7):
            await cmds.send(c[0], "Increment", by=by)
        await cmds.send(c[1], "Increment", by=3)
        await cmds.send(c[1], "Reset")
        for by in (2, 4):
            await cmds.send(c[1], "Increment", by=by)
        await cmds.send(c[2], "Increment", by=1)
        docs = await caught_up(q, "test_counters", cmds)
        assert docs == {
            c[0]: {"id": c[0], "value": 12, "resets": 0, "version": 2},
            c[1]: {"id": c[1], "value": 6, "resets": 1, "version": 4},
            c[2]: {"id": c[2], "value": 1, "resets": 0, "version": 1},
        }
        r = await q.get(f"/views/test_counters/{c[1]}", headers={"If-None-Match": '"4"'})
        assert r.status_code == 304 and r.headers["etag"] == '"4"'

        got = await pages(q, "/views/test_counters", limit=1)
        assert [[d["id"] for d in p] for p in got] == [[c[0]], [c[1]], [c[2]]]
        got = await pages(q, "/views/test_counters", resets=0)
        assert [d["id"] for p in got for d in p] == [c[0], c[2]]
        got = await pages(q, "/views/test_counters", resets="1")
        assert [d for p in got for d in p] == [docs[c[1]]]
        problem(await q.get("/views/test_counters", params={"resets": "one"}), 422, "invalid_request")
        body = problem(await q.get("/views/test_counters", params={"value": 6}), 400, "unknown_filter")
        assert body["allowed_filters"] == ["resets"]

        got = await pages(q, f"/views/test_counters/{c[1]}/test_counter_steps", limit=3)
        assert [len(p) for p in got] == [3, 1]
        assert [(row["counter_id"], row["version"], row["value_after"]) for p in got for row in p] == [
            (c[1], 1, 3),
            (c[1], 2, 0),
            (c[1], 3, 2),
            (c[1], 4, 6),
        ]
        problem(await q.get(f"/views/test_counters/{c[1]}/account_transactions"), 404, "view_not_found")
        # Only the projections served have views.
        problem(await q.get(f"/views/accounts/{c[1]}"), 404, "view_not_found")

        pos = await cmds.send(c[2], "Reset")
        r = await q.get("/views/test_counters", params={"resets": 1, "wait_for": pos, "wait_timeout": 10})
        assert [d["id"] for d in r.json()["items"]] == [c[1], c[2]]

        spec = (await q.get("/openapi.json")).json()
    views = sorted(p for p in spec["paths"] if p.startswith("/views/"))
    assert views == [
        "/views/test_counters",
        "/views/test_counters/live",
        "/views/test_counters/{id}",
        "/views/test_counters/{id}/live",
        "/views/test_counters/{id}/test_counter_steps",
    ]
    schemas = spec["components"]["schemas"]
    doc = schemas["TestCountersDocument"]
    assert {k: v["type"] for k, v in doc["properties"].items()} == {
        "id": "string",
        "value": "integer",
        "resets": "integer",
        "version": "integer",
    }
    assert sorted(doc["required"]) == ["id", "resets", "value", "version"]
    steps = schemas["TestCounterStepsRow"]["properties"]
    assert {k: v["type"] for k, v in steps.items()} == {
        "counter_id": "string",
        "version": "integer",
        "value_after": "integer",
    }
    listing = spec["paths"]["/views/test_counters"]["get"]
    (resets,) = [p for p in listing["parameters"] if p["name"] == "resets"]
    assert {"type": "integer"} in resets["schema"]["anyOf"]
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TestCountersPage"}
    assert schemas["TestCountersPage"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/TestCountersDocument"
    }
    # The Problem component comes with eventfold.problems; stand in for it where it is not there yet.
    schemas.setdefault("Problem", {"type": "object"})
    validate(spec)


async def test_views_read_the_live_generation_after_a_rebuild(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    """The rebuild swaps the tables under the declared names: the views read the new generation."""
    settings = make_settings(own_db, projector=fast_projector())
    async with command_client(settings) as http, running_projector(settings), query_client(settings) as q:
        cmds = Commands(http, "account")
        ids = sorted(uid("acct") for _ in range(3))
        for sid in ids:
            await cmds.send(sid, "OpenAccount", owner="gen")
            await cmds.send(sid, "Deposit", amount=5, reference="before")
        before = await caught_up(q, "accounts", cmds)
        listed = await pages(q, "/views/accounts", owner="gen")
        rows = await pages(q, f"/views/accounts/{ids[0]}/account_transactions")
        engine = create_engine(own_db.read_db_url)
        try:
            result = await rebuild_projection(settings, ACCOUNTS, engine)
            assert result.generation == 2 and await stored_generation(engine, "accounts") == 2
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        finally:
            await engine.dispose()
        assert not [t for t in tables if "__" in t]  # only the new generation is left, under its names
        assert {sid: (await q.get(f"/views/accounts/{sid}")).json() for sid in ids} == before
        assert await pages(q, "/views/accounts", owner="gen") == listed
        assert await pages(q, f"/views/accounts/{ids[0]}/account_transactions") == rows
        # And it keeps up: the live projector writes the new generation, which the views read.
        pos = await cmds.send(ids[0], "Deposit", amount=9, reference="after")
        r = await q.get(f"/views/accounts/{ids[0]}", params={"wait_for": pos, "wait_timeout": 10})
        assert r.json()["balance"] == 14 and r.json()["version"] == 3
        r = await q.get(f"/views/accounts/{ids[0]}/account_transactions")
        assert [row["reference"] for row in r.json()["items"]] == ["before", "after"]


async def test_each_view_is_one_select(command_client, make_settings, db: DatabaseSettings) -> None:
    """Found or not, with child rows or without: one SELECT on the GET pool per request."""
    from query_api.bootstrap import create_app
    from tests.helpers import app_client
    from tests.support.bank import bank

    settings = make_settings(db, projector=fast_projector())
    app = create_app(settings, bank.projections, bank.routers)
    async with command_client(settings) as http, running_projector(settings), app_client(app) as q:
        cmds = Commands(http, "account")
        owner, full, empty = uid("owner"), uid("acct"), uid("acct")
        await cmds.send(full, "OpenAccount", owner=owner)
        await cmds.send(full, "Deposit", amount=3, reference="x")
        await cmds.send(empty, "OpenAccount", owner=owner)
        await caught_up(q, "accounts", cmds)
        statements: list[str] = []
        reads = app.state.side.reads
        sync_engine = reads.engine.sync_engine
        listener = lambda _conn, _cur, sql, *_rest: statements.append(sql)  # noqa: E731
        direct: list[str] = []
        event.listen(sync_engine, "before_cursor_execute", listener)
        try:
            with reads.logging_queries(lambda logged: direct.append(logged.query)):
                for path, status in (
                    (f"/views/accounts/{full}", 200),
                    (f"/views/accounts/{uid('none')}", 404),
                    (f"/views/accounts?owner={owner}&limit=1", 200),
                    (f"/views/accounts/{full}/account_transactions", 200),
                    (f"/views/accounts/{empty}/account_transactions", 200),
                    (f"/views/accounts/{uid('none')}/account_transactions", 404),
                ):
                    statements.clear()
                    direct.clear()
                    r = await q.get(path)
                    assert r.status_code == status, r.text
                    if reads.direct:
                        # PostgreSQL: these reads skip SQLAlchemy (query_api/prepared.py).
                        assert statements == [] and len(direct) == 1, (path, statements, direct)
                        assert direct[0].lstrip().upper().startswith("SELECT"), direct
                        continue
                    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
                    # SQLite's driver needs an explicit BEGIN (eventfold/db.py); no other statement.
                    others = set(statements) - set(selects)
                    assert len(selects) == 1 and others <= {"BEGIN"}, (path, statements)
                    assert direct == []
        finally:
            event.remove(sync_engine, "before_cursor_execute", listener)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_a_read_model_whose_projector_never_started_is_503_not_ready(
    make_settings, pg_admin_url: str, tmp_path, backend: str
) -> None:
    # `eventfold migrate` makes only eventfold's own tables; the projector makes a
    # projection's tables when it first starts. Until then the views say so.
    from eventfold.migrate import upgrade_all
    from query_api.bootstrap import create_app
    from tests.conftest import create_database, drop_database
    from tests.helpers import app_client
    from tests.support.bank import bank

    if backend == "postgres":
        url = await create_database(pg_admin_url, migrate=False)
        db = DatabaseSettings(write_db_url=url, read_db_url=url)
    else:
        db = DatabaseSettings(
            write_db_url=f"sqlite+aiosqlite:///{tmp_path / 'write.db'}",
            read_db_url=f"sqlite+aiosqlite:///{tmp_path / 'read.db'}",
        )
    try:
        await upgrade_all(db.write_db_url, db.read_db_url)
        async with app_client(create_app(make_settings(db), bank.projections, bank.routers)) as q:
            for url in ("/views/accounts/a-1", "/views/accounts", "/views/accounts/a-1/account_transactions"):
                r = await q.get(url)
                assert r.status_code == 503, (url, r.text)
                assert r.json()["code"] == "projection_not_ready" and r.headers["retry-after"] == "2"
            assert (await q.get("/accounts/a-1")).json()["code"] == "projection_not_ready"
    finally:
        if backend == "postgres":
            await drop_database(pg_admin_url, db.read_db_url)
