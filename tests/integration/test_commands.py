"""The command API over HTTP, with the real broker and both store backends."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from command_api.outcomes import PendingCommand
from command_api.store import WriteStore
from eventfold.db import create_engine
from eventfold.settings import DatabaseSettings
from examples.bank.contracts import OpenAccount
from schemas.position import Position
from tests.helpers import first_versions, read_topic, uid, wait_until
from tests.support.bank import default_aggregates
from tests.support.counter import with_counter


async def send(
    http: httpx.AsyncClient, sid: str, type_: str, data: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/commands/account/{sid}",
        json={"type": type_, "data": data or {}},
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


async def test_every_command_and_its_events_in_order(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid = uid("acct")
    async with command_client(settings) as http:
        steps = [
            ("OpenAccount", {"owner": "Ann"}),
            ("Deposit", {"amount": 500}),
            ("Withdraw", {"amount": 200}),
            ("Withdraw", {"amount": 300}),
            ("CloseAccount", {}),
        ]
        bodies = []
        for n, (type_, data) in enumerate(steps, start=1):
            r = await send(http, sid, type_, data)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["version"] == n and body["published"] is True
            assert r.headers["etag"] == f'"{n}"'
            assert [e["version"] for e in body["events"]] == [n]
            bodies.append(body)
        stream = (await http.get(f"/streams/account/{sid}")).json()
        assert stream == {
            "stream_type": "account",
            "stream_id": sid,
            "version": 5,
            "state": {"status": "closed", "owner": "Ann", "balance": 0},
        }
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    mine = [r for r in records if r.key == sid.encode()]
    assert [r.envelope().type for r in mine] == [
        "AccountOpened",
        "Deposited",
        "Withdrawn",
        "Withdrawn",
        "AccountClosed",
    ]
    assert len({r.partition for r in mine}) == 1
    # The position names where the last event really sits.
    last = Position.parse(bodies[-1]["position"])
    assert (last.topic, last.partition, last.offset) == (
        settings.kafka.topic("account"),
        mine[-1].partition,
        mine[-1].offset,
    )
    env = mine[1].envelope()
    assert env.data == {"amount": 500, "reference": ""} and env.stream_type == "account"
    assert env.schema_version == 2
    assert mine[1].headers["version"] == b"2" and mine[1].headers["event_id"] == str(env.event_id).encode()
    assert env.causation_id and env.correlation_id


async def test_domain_rules_are_refused_and_append_nothing(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid, fresh = uid("acct"), uid("acct")
    async with command_client(settings) as http:
        assert (await send(http, fresh, "Deposit", {"amount": 1})).json()["code"] == "account_not_open"
        await send(http, sid, "OpenAccount", {"owner": "B"})
        await send(http, sid, "Deposit", {"amount": 10})
        cases = [
            ("OpenAccount", {"owner": "again"}, "account_exists"),
            ("Withdraw", {"amount": 11}, "insufficient_funds"),
            ("CloseAccount", {}, "balance_not_zero"),
        ]
        for type_, data, code in cases:
            r = await send(http, sid, type_, data)
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == code
        await send(http, sid, "Withdraw", {"amount": 10})
        assert (await send(http, sid, "CloseAccount")).status_code == 200
        for type_, data in [("Deposit", {"amount": 1}), ("Withdraw", {"amount": 1}), ("CloseAccount", {})]:
            r = await send(http, sid, type_, data)
            assert (r.status_code, r.json()["code"]) == (422, "account_closed")
        assert (await http.get(f"/streams/account/{sid}")).json()["version"] == 4
        assert (await http.get(f"/streams/account/{fresh}")).status_code == 404
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2, 3, 4]
    assert first_versions(records, fresh) == []


async def test_stale_if_match_is_a_409_with_current_version(command_client, make_settings) -> None:
    settings = make_settings()
    sid = uid("acct")
    async with command_client(settings) as http:
        assert (await send(http, sid, "OpenAccount", {"owner": "C"}, if_match='"0"')).status_code == 200
        assert (await send(http, sid, "Deposit", {"amount": 3}, if_match='"1"')).status_code == 200
        r = await send(http, sid, "Deposit", {"amount": 3}, if_match='"1"')
        assert r.status_code == 409
        assert r.json()["code"] == "version_conflict" and r.json()["current_version"] == 2
        assert (await send(http, sid, "Deposit", {"amount": 3}, if_match='W/"2"')).status_code == 200
        r = await send(http, sid, "Deposit", {"amount": 3}, if_match="two")
        assert (r.status_code, r.json()["code"]) == (400, "invalid_if_match")
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2, 3]


async def test_concurrent_withdrawals_never_overdraw(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid = uid("acct")
    async with command_client(settings) as http:
        await send(http, sid, "OpenAccount", {"owner": "D"})
        await send(http, sid, "Deposit", {"amount": 1000})
        results = await asyncio.gather(*(send(http, sid, "Withdraw", {"amount": 70}) for _ in range(50)))
        ok = [r for r in results if r.status_code == 200]
        refused = [r for r in results if r.status_code == 422]
        assert len(ok) == 1000 // 70 and len(ok) + len(refused) == 50
        assert {r.json()["code"] for r in refused} == {"insufficient_funds"}
        assert sorted(r.json()["version"] for r in ok) == list(range(3, 3 + len(ok)))
        state = (await http.get(f"/streams/account/{sid}")).json()["state"]
        assert state["balance"] == 1000 - 70 * len(ok)
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    mine = [r.envelope() for r in records if r.key == sid.encode()]
    assert [e.version for e in mine] == list(range(1, 3 + len(ok)))
    assert [e.type for e in mine[2:]] == ["Withdrawn"] * len(ok)


async def test_idempotency_key_replays_the_first_response(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid = uid("acct")
    key = uid("key")
    async with command_client(settings) as http:
        await send(http, sid, "OpenAccount", {"owner": "E"})
        first = await send(http, sid, "Deposit", {"amount": 7}, idempotency_key=key)
        assert first.status_code == 200
        again = await send(http, sid, "Deposit", {"amount": 7}, idempotency_key=key)
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = await send(http, sid, "Deposit", {"amount": 8}, idempotency_key=key)
        assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
        # Concurrent repeats of a new key: exactly one append.
        key2 = uid("key")
        burst = await asyncio.gather(
            *(send(http, sid, "Deposit", {"amount": 1}, idempotency_key=key2) for _ in range(10))
        )
        assert {r.status_code for r in burst} == {200}
        assert len({r.json()["version"] for r in burst}) == 1
        assert (await http.get(f"/streams/account/{sid}")).json()["state"]["balance"] == 8
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2, 3]


async def test_bad_input_gets_problem_json_and_appends_nothing(command_client, make_settings) -> None:
    settings = make_settings()
    sid = uid("acct")
    async with command_client(settings) as http:
        await send(http, sid, "OpenAccount", {"owner": "F"})
        url = f"/commands/account/{sid}"
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"content": b"{not json"}, 400, "malformed_json"),
            ({"content": b"[1, 2]"}, 422, "invalid_command"),
            ({"json": {"data": {}}}, 422, "invalid_command"),
            ({"json": {"type": "Deposit", "data": {"amount": "5"}}}, 422, "invalid_command_data"),
            ({"json": {"type": "Deposit", "data": {"amount": -5}}}, 422, "invalid_command_data"),
            ({"json": {"type": "Deposit", "data": {"amount": 0}}}, 422, "invalid_command_data"),
            ({"json": {"type": "Deposit", "data": {"amount": 1.5}}}, 422, "invalid_command_data"),
            ({"json": {"type": "Deposit", "data": {"amount": 5, "extra": 1}}}, 422, "invalid_command_data"),
            ({"json": {"type": "Explode", "data": {}}}, 422, "unknown_command_type"),
            ({"content": b"x" * (10 * 1024 * 1024)}, 413, "body_too_large"),
        ]
        for kwargs, status, code in cases:
            r = await http.post(url, **kwargs)
            assert r.status_code == status, (kwargs.keys(), r.text)
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["code"] == code and problem["status"] == status and problem["detail"]
        r = await http.post(f"/commands/ledger/{sid}", json={"type": "Deposit", "data": {"amount": 1}})
        assert (r.status_code, r.json()["code"]) == (404, "unknown_stream_type")
        r = await http.post("/commands/account/bad%20id", json={"type": "Deposit", "data": {"amount": 1}})
        assert r.status_code == 422
        assert (await http.get(f"/streams/account/{sid}")).json()["version"] == 1
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1]


async def test_a_stream_types_route_refuses_bad_parameters_as_fastapi_does(
    command_client, make_settings
) -> None:
    """The stream types' routes read their parameters themselves; the catch-all route is FastAPI's.

    Both must answer a bad path parameter or header with the same 422.
    """
    body = {"type": "Deposit", "data": {"amount": 1}}
    cases: list[tuple[str, dict[str, str], list[str]]] = [
        ("bad%20id", {}, ["path", "stream_id"]),
        ("x" * 129, {}, ["path", "stream_id"]),
        (uid(), {"If-Match": '"' + "1" * 70 + '"'}, ["header", "if-match"]),
        (uid(), {"Idempotency-Key": ""}, ["header", "idempotency-key"]),
        (uid(), {"Idempotency-Key": "k" * 256}, ["header", "idempotency-key"]),
    ]
    async with command_client(make_settings()) as http:
        for stream_id, headers, loc in cases:
            ours = await http.post(f"/commands/account/{stream_id}", json=body, headers=headers)
            theirs = await http.post(f"/commands/no-such-type/{stream_id}", json=body, headers=headers)
            assert ours.status_code == theirs.status_code == 422, (loc, ours.text, theirs.text)
            assert ours.headers["content-type"] == "application/problem+json"
            problem = ours.json()
            assert problem["code"] == "invalid_request"
            assert [e["loc"] for e in problem["errors"]] == [loc]
            assert problem["errors"] == theirs.json()["errors"]
        r = await http.post(f"/commands/account/{uid()}", json=body, headers={"Idempotency-Key": "k" * 255})
        assert r.status_code == 422 and r.json()["code"] == "account_not_open"


async def test_a_second_aggregate_needs_no_plumbing_change(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    sid = uid("ctr")
    async with command_client(settings, with_counter()) as http:
        r = await http.post(f"/commands/counter/{sid}", json={"type": "Increment", "data": {"by": 60}})
        assert r.status_code == 200, r.text
        r = await http.post(f"/commands/counter/{sid}", json={"type": "Increment", "data": {"by": 60}})
        assert (r.status_code, r.json()["code"]) == (422, "counter_overflow")
        r = await http.post(f"/commands/counter/{sid}", json={"type": "Reset"})
        assert r.json()["version"] == 2
        assert (await http.get(f"/streams/counter/{sid}")).json()["state"] == {"value": 0}
    records = await read_topic(settings.kafka, settings.kafka.topic("counter"))
    assert [r.envelope().type for r in records if r.key == sid.encode()] == ["Incremented", "WasReset"]


async def test_health_readiness_and_descriptions(command_client, make_settings) -> None:
    settings = make_settings()
    async with command_client(settings) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"
        assert ready.json()["degraded"] is False
        assert (await http.get("/openapi.json")).json()["paths"]["/commands/account/{stream_id}"]
        asyncapi = (await http.get("/asyncapi.json")).json()
        assert asyncapi["channels"]["accountEvents"]["address"] == settings.kafka.topic("account")


async def test_unreachable_write_store_is_a_503_and_appends_nothing(command_client, make_settings) -> None:
    # Nothing listens on port 9 of loopback: every transaction fails to connect.
    dead = DatabaseSettings(
        write_db_url="postgresql+asyncpg://postgres@127.0.0.1:9/none",
        read_db_url="postgresql+asyncpg://postgres@127.0.0.1:9/none",
    )
    settings = make_settings(dead)
    sid = uid("acct")
    async with command_client(settings) as http:
        r = await send(http, sid, "OpenAccount", {"owner": "I"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["code"] == "unavailable"
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
        assert ready.headers["content-type"].startswith("application/problem+json")
        assert ready.json()["code"] == "not_ready"
        assert ready.json()["checks"]["broker"] == "ok"  # a live broker cannot make up for the store
    assert first_versions(await read_topic(settings.kafka, settings.kafka.topic("account")), sid) == []


async def test_correlation_and_trace_context_reach_kafka_and_metrics_count(
    command_client, make_settings
) -> None:
    settings = make_settings()
    sid = uid("acct")
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with command_client(settings) as http:
        r = await send(
            http, sid, "OpenAccount", {"owner": "J"}, x_correlation_id="order-77", traceparent=trace
        )
        assert r.headers["x-correlation-id"] == "order-77"
        generated = (await send(http, sid, "Deposit", {"amount": 2})).headers["x-correlation-id"]
        assert generated and generated != "order-77"
        await send(http, sid, "Withdraw", {"amount": 99})
        metrics = (await http.get("/metrics")).text
        assert 'eventfold_command_seconds_count{outcome="accepted",stream_type="account"}' in metrics
        assert 'eventfold_command_seconds_count{outcome="refused",stream_type="account"}' in metrics
        assert "eventfold_outbox_backlog" in metrics
    records = [
        r for r in await read_topic(settings.kafka, settings.kafka.topic("account")) if r.key == sid.encode()
    ]
    assert records[0].envelope().correlation_id == "order-77"
    assert records[0].headers["correlation_id"] == b"order-77"
    assert records[0].headers["traceparent"] == trace.encode()
    assert records[1].envelope().correlation_id == generated
    assert "traceparent" not in records[1].headers


async def test_connections_killed_by_the_server_cost_no_command(
    command_client, make_settings, pg_url
) -> None:
    """As after a PostgreSQL restart: pooled connections are dead; the next command still succeeds."""
    import asyncpg
    from sqlalchemy.engine import make_url

    settings = make_settings()
    sid = uid("acct")
    async with command_client(settings) as http:
        assert (await send(http, sid, "OpenAccount", {"owner": "K"})).status_code == 200
        url = make_url(pg_url)
        admin = await asyncpg.connect(
            url.set(drivername="postgresql", database="postgres").render_as_string(False)
        )
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                url.database,
            )
        finally:
            await admin.close()
        assert killed >= 1
        r = await send(http, sid, "Deposit", {"amount": 3})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2


async def test_strings_no_store_can_hold_are_refused_and_append_nothing(
    command_client, make_settings
) -> None:
    """A NUL or an unpaired surrogate anywhere in a command's data, for any stream type."""
    settings = make_settings()
    acct, ctr = uid("acct"), uid("ctr")
    async with command_client(settings, with_counter()) as http:
        assert (await send(http, acct, "OpenAccount", {"owner": "Nul"})).status_code == 200
        r = await http.post(f"/commands/counter/{ctr}", json={"type": "Increment", "data": {"by": 1}})
        assert r.status_code == 200, r.text
        # Raw bodies: a lone surrogate escape is valid JSON text but no UTF-8 string.
        cases = [
            ("account", acct, b'{"type": "Deposit", "data": {"amount": 5, "reference": "\\u0000"}}'),
            ("account", acct, b'{"type": "OpenAccount", "data": {"owner": "a\\u0000b"}}'),
            ("account", acct, b'{"type": "Deposit", "data": {"amount": 5, "reference": "x\\ud800"}}'),
            ("account", acct, b'{"type": "Withdraw", "data": {"amount": 1, "reference": "\\udfff"}}'),
            ("account", acct, b'{"type": "Deposit", "data": {"amount": 5, "k\\u0000": 1}}'),
            ("counter", ctr, b'{"type": "Increment", "data": {"by": 1, "note": "\\u0000"}}'),
            ("counter", ctr, b'{"type": "Increment", "data": {"by": 1, "note": "\\ud83d"}}'),
            ("counter", ctr, b'{"type": "Reset", "data": {"why\\u0000": "x"}}'),
            ("counter", ctr, b'{"type": "Reset", "data": {"nested": [{"deep": "\\u0000"}]}}'),
        ]
        for stream_type, sid, body in cases:
            r = await http.post(
                f"/commands/{stream_type}/{sid}", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["code"] == "unstorable_value", (body, problem)
            assert problem["errors"] and problem["detail"]
        assert (await http.get(f"/streams/account/{acct}")).json()["version"] == 1
        assert (await http.get(f"/streams/counter/{ctr}")).json()["version"] == 1
        # An escaped backslash before "u0000" is six ordinary characters.
        r = await send(http, acct, "Deposit", {"amount": 5, "reference": "\\u0000"})
        assert r.status_code == 200, r.text
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, acct) == [1, 2]
    records = await read_topic(settings.kafka, settings.kafka.topic("counter"))
    assert first_versions(records, ctr) == [1]


@pytest.mark.apache  # the embedded broker creates a topic on first use, so none is ever missing
async def test_a_topic_that_does_not_exist_holds_back_no_other_topic(
    command_client, make_settings, fresh_pg_url: str
) -> None:
    # An outbox row whose topic is missing (never created, or a renamed prefix)
    # waits for its topic; the commands of every other topic are published meanwhile.
    settings = make_settings(DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url))
    missing = settings.kafka.model_copy(update={"topic_prefix": uid("missing")})
    engine = create_engine(settings.db.write_db_url)
    try:
        orphan = WriteStore(engine, default_aggregates(), missing)
        done = asyncio.get_running_loop().create_future()
        pending = PendingCommand(
            "account", uid("orphan"), OpenAccount(owner="o"), None, None, uid("cmd"), "c", "c", done
        )
        await orphan.commit([pending])
    finally:
        await engine.dispose()
    sid = uid("acct")
    async with command_client(settings) as http:

        async def orphan_queued() -> bool:
            return (await http.get("/readyz")).json()["checks"]["outbox_backlog"] != "0"

        await wait_until(orphan_queued, timeout=20, what="the relay to queue the orphan row")
        for n, (type_, data) in enumerate([("OpenAccount", {"owner": "P"}), ("Deposit", {"amount": 3})], 1):
            r = await send(http, sid, type_, data)
            assert (r.status_code, r.json()["version"], r.json()["published"]) == (200, n, True), r.text
        assert (await http.get("/readyz")).json()["checks"]["outbox_backlog"] == "1"
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2]
