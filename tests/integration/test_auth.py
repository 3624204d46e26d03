"""Authentication and scopes on every protected route of both APIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from eventfold.auth import new_key
from eventfold.settings import AuthSettings
from tests.helpers import uid
from tests.support.counter import with_counter

TOKENS: dict[str, str] = {}


def auth_settings() -> AuthSettings:
    entries = []
    for name, scopes, expires in [
        ("writer", ["commands:write"], None),
        ("reader", ["read"], None),
        ("admin", ["admin"], None),
        ("expired", ["commands:write", "read"], datetime.now(UTC) - timedelta(minutes=1)),
    ]:
        token, entry = new_key(name, scopes, expires)
        TOKENS[name] = token
        entries.append(entry.model_dump(mode="json"))
    return AuthSettings(api_keys=orjson.dumps(entries).decode())


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


# (method, path template, body, who may) for every protected command API route
COMMAND_ROUTES = [
    ("POST", "/commands/account/{sid}", {"type": "OpenAccount", "data": {"owner": "x"}}, {"writer", "admin"}),
    ("GET", "/streams/account/{sid}", None, {"writer", "reader", "admin"}),
]
BAD = {
    "missing": {},
    "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
    "garbage": {"Authorization": "Bearer nonsense"},
    "unknown id": {"Authorization": "Bearer efk_nobody_abcdef"},
}


@pytest.mark.parametrize(("method", "path", "body", "allowed"), COMMAND_ROUTES)
async def test_command_api_routes(command_client, make_settings, method, path, body, allowed) -> None:
    settings = make_settings(auth=auth_settings())
    sid = uid("auth")
    url = path.format(sid=sid)
    forged = TOKENS["writer"][:-4] + "AAAA"
    async with command_client(settings) as http:
        for label, headers in [*BAD.items(), ("forged", {"Authorization": f"Bearer {forged}"})]:
            r = await http.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (label, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["code"] == "unauthorized"
        r = await http.request(method, url, json=body, headers=bearer("expired"))
        assert (r.status_code, r.json()["detail"]) == (401, "the token has expired")
        for who in ("writer", "reader", "admin"):
            r = await http.request(method, url, json=body, headers=bearer(who))
            if who in allowed:
                # Past authentication: the route itself answers (200, or 404/422 on its own terms).
                assert r.status_code not in (401, 403), (who, r.text)
            else:
                assert (r.status_code, r.json()["code"]) == (403, "forbidden"), who
        # Unauthenticated requests learn nothing about what exists.
        r = await http.post("/commands/no-such-type/x", json=body)
        assert r.status_code == 401
        # Probes and the API description stay open.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200


async def test_no_keys_configured_means_everything_is_refused(command_client, make_settings) -> None:
    settings = make_settings(auth=AuthSettings())
    async with command_client(settings) as http:
        r = await http.post(
            f"/commands/account/{uid()}", json={"type": "OpenAccount", "data": {"owner": "x"}}
        )
        assert r.status_code == 401


QUERY_ROUTES = [
    "/accounts/{sid}",
    "/accounts?limit=5",
    "/accounts/{sid}/transactions",
    "/projections",
    "/views/accounts/{sid}",
    "/views/accounts?limit=5",
    "/views/accounts/{sid}/account_transactions",
    "/views/nothing",
]


@pytest.mark.parametrize("path", QUERY_ROUTES)
async def test_query_api_routes(make_settings, path: str) -> None:
    from query_api.bootstrap import create_app
    from tests.helpers import app_client

    settings = make_settings(auth=auth_settings())
    url = path.format(sid=uid("auth"))
    forged = TOKENS["reader"][:-4] + "AAAA"
    from tests.support.bank import bank

    async with app_client(create_app(settings, bank.projections, bank.routers)) as http:
        for label, headers in [*BAD.items(), ("forged", {"Authorization": f"Bearer {forged}"})]:
            r = await http.get(url, headers=headers)
            assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), label
        r = await http.get(url, headers=bearer("expired"))
        assert (r.status_code, r.json()["detail"]) == (401, "the token has expired")
        r = await http.get(url, headers=bearer("writer"))
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        for who in ("reader", "admin"):
            r = await http.get(url, headers=bearer(who))
            assert r.status_code not in (401, 403), (who, r.text)
        assert (await http.get("/healthz")).status_code == 200


async def _documented_security_is_enforced(http: Any) -> None:
    """Call every documented operation without a token, then with an admin's.

    Only the operations that declare the bearer scheme may refuse the first
    with 401; none refuses the second. The rebuild is asked of a projection
    that does not exist, so it stops at its 404; a live stream of a position
    that is not one, so it stops at its 400.
    """
    sid = uid("doc")
    values = {
        "stream_id": sid,
        "stream_type": "account",
        "account_id": sid,
        "id": sid,
        "name": "no_such_projection",
    }
    doc = (await http.get("/openapi.json")).json()
    seen = {True: 0, False: 0}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            url = path.format(**values)
            body = {"type": "OpenAccount", "data": {"owner": "x"}} if method == "post" else None
            r = await http.request(method, url, json=body)
            secured = "security" in op
            seen[secured] += 1
            assert (r.status_code == 401) == secured, (method, path, r.status_code, r.text)
            if "text/event-stream" in op["responses"].get("200", {}).get("content", {}):
                # A live stream would not end: an invalid resume point answers at once, past auth.
                url += "?since=not-a-position"
            r = await http.request(method, url, json=body, headers=bearer("admin"))
            assert r.status_code != 401, (method, path, r.text)
    assert seen[True] and seen[False]


async def test_command_api_documents_exactly_the_operations_that_need_a_token(
    command_client, make_settings
) -> None:
    async with command_client(make_settings(auth=auth_settings()), with_counter()) as http:
        await _documented_security_is_enforced(http)


async def test_query_api_documents_exactly_the_operations_that_need_a_token(make_settings) -> None:
    from query_api.bootstrap import create_app
    from tests.helpers import app_client
    from tests.support.bank import bank

    settings = make_settings(auth=auth_settings())
    async with app_client(create_app(settings, bank.projections, bank.routers)) as http:
        await _documented_security_is_enforced(http)


async def test_cors_is_off_unless_configured(command_client, make_settings) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with command_client(make_settings(auth=AuthSettings(auth_disabled=True))) as http:
        r = await http.options("/commands/account/x", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    configured = AuthSettings(auth_disabled=True, cors_origins="https://app.example")
    async with command_client(make_settings(auth=configured)) as http:
        r = await http.options("/commands/account/x", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await http.options("/commands/account/x", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
