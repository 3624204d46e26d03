"""Both OpenAPI documents are contracts other teams can build on.

They are valid OpenAPI (every `$ref` resolves), each stream type's command
body is declared from its aggregate, and bearer authentication is declared on
exactly the operations that need a token. The documents are read as served
at /openapi.json; building them needs no broker and no database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import ValidationError

from command_api.bodies import body_schema_name
from command_api.bootstrap import create_app as command_app
from eventfold.aggregate import Aggregates
from eventfold.settings import AuthSettings, Settings
from examples.bank.projection import ACCOUNTS
from query_api.bootstrap import create_app as query_app
from schemas.registry import StreamContract
from tests.integration.test_counter_projection import COUNTERS
from tests.support.bank import bank, default_aggregates
from tests.support.counter import with_counter

SETTINGS = Settings(auth=AuthSettings(auth_disabled=True))
APPS: dict[str, Callable[[], FastAPI]] = {
    "command API": lambda: command_app(SETTINGS, default_aggregates()),
    "command API with the counter aggregate": lambda: command_app(SETTINGS, with_counter()),
    "query API": lambda: query_app(SETTINGS, [ACCOUNTS], bank.routers),
    "query API with the counter projection": lambda: query_app(SETTINGS, [ACCOUNTS, COUNTERS]),
}
# The operations anyone may call: probes and the AsyncAPI document.
OPEN = {"/healthz", "/readyz", "/asyncapi.json"}
PROBLEM = "#/components/schemas/Problem"


async def served(app: FastAPI) -> dict[str, Any]:
    """The document as /openapi.json serves it (the app's lifespan is not needed for it)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, path, op) for path, item in doc["paths"].items() for m, op in item.items()]


@pytest.fixture(params=list(APPS), scope="module")
async def doc(request: pytest.FixtureRequest) -> dict[str, Any]:
    return await served(APPS[request.param]())


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)


def test_problems_are_documented_as_rfc_9457(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "code", "detail"}
    assert {"instance", "errors", "known", "current_version", "checks"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True
    errors = [
        (m, path, status)
        for m, path, op in operations(doc)
        for status, response in op["responses"].items()
        if status.startswith(("4", "5"))
        and response.get("content") != {"application/problem+json": {"schema": {"$ref": PROBLEM}}}
    ]
    assert not errors, "every error answer is a problem+json Problem"


def test_bearer_auth_is_declared_on_every_operation_but_the_open_ones(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "efk_<id>_<secret>",
            "description": doc["components"]["securitySchemes"]["bearer"]["description"],
        }
    }
    for method, path, op in operations(doc):
        if path in OPEN:
            assert "security" not in op, (method, path)
        else:
            assert op["security"] == [{"bearer": []}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)


async def command_doc(aggregates: Aggregates) -> dict[str, Any]:
    return await served(command_app(SETTINGS, aggregates))


@pytest.mark.parametrize("aggregates", [default_aggregates, with_counter], ids=["default", "with counter"])
async def test_each_stream_type_has_its_command_route_and_body(
    aggregates: Callable[[], Aggregates],
) -> None:
    aggs = aggregates()
    doc = await command_doc(aggs)
    commands = sorted(p for p in doc["paths"] if p.startswith("/commands/"))
    assert commands == sorted(f"/commands/{a.stream_type}/{{stream_id}}" for a in aggs)
    schemas = doc["components"]["schemas"]
    for aggregate in aggs:
        op = doc["paths"][f"/commands/{aggregate.stream_type}/{{stream_id}}"]["post"]
        body = op["requestBody"]
        assert body["required"] is True
        name = body_schema_name(aggregate.stream_type)
        assert body["content"] == {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
        union = schemas[name]
        mapping = union["discriminator"]["mapping"]
        assert union["discriminator"]["propertyName"] == "type"
        assert set(mapping) == set(aggregate.contract.commands)
        assert union["oneOf"] == [{"$ref": ref} for ref in mapping.values()]
        for command_type, model in aggregate.contract.commands.items():
            variant = schemas[mapping[command_type].removeprefix("#/components/schemas/")]
            assert variant["properties"]["type"]["const"] == command_type
            data = schemas[variant["properties"]["data"]["$ref"].removeprefix("#/components/schemas/")]
            assert data == model.model_json_schema(ref_template="#/components/schemas/{model}")


def route_accepts(contract: StreamContract, body: dict[str, Any]) -> bool:
    """What the route lets through to the aggregate: a known command type whose model takes the data."""
    try:
        model = contract.commands[body["type"]]
        model.model_validate(body.get("data", {}))
    except (KeyError, ValidationError):
        return False
    return True


BODIES: list[tuple[str, dict[str, Any]]] = [
    ("account", {"type": "OpenAccount", "data": {"owner": "Ann"}}),
    ("account", {"type": "Deposit", "data": {"amount": 5, "reference": "r-1"}}),
    ("account", {"type": "CloseAccount"}),
    ("account", {"type": "CloseAccount", "data": {}}),
    ("account", {"type": "OpenAccount"}),
    ("account", {"type": "OpenAccount", "data": {"owner": ""}}),
    ("account", {"type": "Deposit", "data": {"amount": 0}}),
    ("account", {"type": "Deposit", "data": {"amount": "5"}}),
    ("account", {"type": "Deposit", "data": {"amount": 5, "note": "x"}}),
    ("account", {"type": "Withdraw", "data": {"amount": 10**15 + 1}}),
    ("account", {"type": "Increment", "data": {"by": 1}}),
    ("account", {"type": "Nope", "data": {}}),
    ("counter", {"type": "Increment", "data": {"by": 1000}}),
    ("counter", {"type": "Increment", "data": {"by": 1001}}),
    ("counter", {"type": "Reset"}),
    ("counter", {"type": "OpenAccount", "data": {"owner": "Ann"}}),
]


async def test_the_documented_bodies_are_the_ones_the_route_accepts() -> None:
    aggs = with_counter()
    doc = await command_doc(aggs)
    for stream_type, body in BODIES:
        schema = {"$ref": f"#/components/schemas/{body_schema_name(stream_type)}", **doc}
        documented = Draft202012Validator(schema).is_valid(body)
        assert documented == route_accepts(aggs.get(stream_type).contract, body), (stream_type, body)
    assert {route_accepts(aggs.get(s).contract, b) for s, b in BODIES} == {True, False}


async def test_the_document_is_built_once_and_stays_the_same() -> None:
    app = command_app(SETTINGS, with_counter())
    first = app.openapi()
    assert app.openapi() is first
    assert await served(app) == await served(app) == first
