"""How the generic views type a table: JSON values, response schemas, the routes they declare."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import orjson
import pytest
from openapi_spec_validator import validate
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
    Uuid,
)

from eventfold import jsonutil
from eventfold.projection import Projection
from query_api.columns import row_shaper
from query_api.view_models import row_model
from query_api.view_routes import view_router
from query_api.views import iso
from tests.support.counter import COUNTER, COUNTERS, counter_steps

metadata = MetaData()
kinds = Table(
    "all_kinds",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("big", BigInteger, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("ratio", Float, nullable=False),
    Column("price", Numeric(12, 2), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("clock", Time, nullable=False),
    Column("blob", LargeBinary, nullable=False),
    Column("ref", Uuid, nullable=False),
    Column("extra", JSON, nullable=False),
    Column("tier", Enum("gold", "silver", name="tier"), nullable=False),
    Column("note", Text, nullable=True, comment="Free text."),
)


def test_rows_become_json_typed_values() -> None:
    ref = uuid.uuid4()
    paris = dt.timezone(dt.timedelta(hours=2))
    row = (
        "k1",
        3,
        2**40,
        True,
        0.5,
        Decimal("10.25"),
        dt.datetime(2026, 1, 2, 5, 4, 5, tzinfo=paris),
        dt.date(2026, 1, 2),
        dt.time(3, 4, 5),
        b"\x00\xff",
        ref,
        {"a": [1]},
        "gold",
        None,
    )
    # What a view sends: the shaped row as the JSON encoder writes it.
    assert sent(row_shaper(list(kinds.columns))(row)) == {
        "id": "k1",
        "version": 3,
        "big": 2**40,
        "flag": True,
        "ratio": 0.5,
        "price": "10.25",
        "at": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "clock": "03:04:05",
        "blob": "AP8=",
        "ref": str(ref),
        "extra": {"a": [1]},
        "tier": "gold",
        "note": None,
    }
    # SQLite hands back naive timestamps, stored in UTC.
    naive = row_shaper([kinds.c.at])((dt.datetime(2026, 1, 2, 3, 4, 5),))
    assert sent(naive) == {"at": "2026-01-02T03:04:05+00:00"}
    # The text is exactly `iso`'s, microseconds included.
    for at in (dt.datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 3, 4, 5, 123000)):
        assert sent(row_shaper([kinds.c.at])((at,))) == {"at": iso(at)}


def sent(shaped: dict[str, object]) -> object:
    return orjson.loads(jsonutil.dumps(shaped))


def test_the_response_schema_types_each_column() -> None:
    schema = row_model(kinds, "Document", "d").model_json_schema(mode="serialization")
    assert schema["title"] == "AllKindsDocument"
    props = schema["properties"]
    assert list(props) == [c.name for c in kinds.columns]
    assert sorted(schema["required"]) == sorted(c.name for c in kinds.columns)
    assert props["version"]["type"] == props["big"]["type"] == "integer"
    assert props["flag"]["type"] == "boolean" and props["ratio"]["type"] == "number"
    assert props["price"] == {"type": "string", "format": "decimal", "title": "price"}
    assert props["at"]["format"] == "date-time" and props["day"]["format"] == "date"
    assert props["blob"] == {"type": "string", "format": "base64", "title": "blob"}
    assert props["ref"]["format"] == "uuid"
    assert props["tier"]["enum"] == ["gold", "silver"]
    assert props["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["note"]["description"] == "Free text."


def _projection(doc: Table, children: tuple[Table, ...] = (), filters: tuple[str, ...] = ()) -> Projection:
    return Projection("kinds", COUNTER, doc, dict(COUNTERS.handlers), child_tables=children, filters=filters)


def test_a_view_router_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="the listing takes those"):
        view_router(
            [
                _projection(
                    Table(
                        "t1",
                        MetaData(),
                        Column("id", String),
                        Column("version", Integer),
                        Column("limit", Integer),
                    ),
                    filters=("limit",),
                )
            ]
        )
    with pytest.raises(ValueError, match="string column"):
        view_router(
            [
                _projection(
                    Table(
                        "t2", MetaData(), Column("id", Integer, primary_key=True), Column("version", Integer)
                    )
                )
            ]
        )
    lone_key = Table("t3", MetaData(), Column("doc", String, primary_key=True), Column("version", Integer))
    with pytest.raises(ValueError, match="primary key of"):
        view_router([_projection(kinds, (lone_key,))])
    assert view_router([_projection(kinds, (counter_steps,), ("tier", "at"))]).routes


def test_the_default_query_api_describes_the_account_views() -> None:
    from eventfold.settings import Settings
    from query_api.bootstrap import create_app
    from tests.support.bank import bank

    spec = create_app(Settings(), bank.projections, bank.routers).openapi()
    paths = spec["paths"]
    doc = paths["/views/accounts/{id}"]["get"]
    assert doc["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AccountsDocument"
    }
    assert {"200", "304", "404", "504"} <= set(doc["responses"])
    listing = paths["/views/accounts"]["get"]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert {"owner", "status", "limit", "cursor", "wait_for", "wait_timeout"} == set(params)
    assert {"type": "string", "maxLength": 200} in params["owner"]["anyOf"]
    child = paths["/views/accounts/{id}/account_transactions"]["get"]
    assert child["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AccountTransactionsPage"
    }
    schemas = spec["components"]["schemas"]
    props = schemas["AccountsDocument"]["properties"]
    assert props["balance"]["type"] == "integer" and props["opened_at"]["format"] == "date-time"
    assert schemas["AccountTransactionsRow"]["properties"]["occurred_at"]["format"] == "date-time"
    assert all(op.get("description") for ops in paths.values() for op in ops.values())
    # The hand-written routes stay.
    assert {"/accounts", "/accounts/{account_id}", "/accounts/{account_id}/transactions"} <= set(paths)
    # The Problem component comes with eventfold.problems; stand in for it where it is not there yet.
    schemas.setdefault("Problem", {"type": "object"})
    validate(spec)
