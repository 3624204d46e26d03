"""The AsyncAPI document: generated from the registry, checked in, served."""

from __future__ import annotations

from pathlib import Path

import orjson

from eventfold.cli.main import asyncapi_document
from eventfold.settings import Settings
from schemas.asyncapi import document
from tests.support.bank import bank, default_aggregates
from tests.support.counter import with_counter

CHECKED_IN = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.json"


def test_checked_in_document_matches_the_registry() -> None:
    current = asyncapi_document(bank, Settings(kafka={"topic_prefix": "eventfold"}))
    assert CHECKED_IN.read_text().strip() == current, (
        "run `eventfold asyncapi --output schemas/asyncapi.json`"
    )


def test_every_stream_and_event_is_described() -> None:
    aggs = with_counter()
    doc = document((a.contract for a in aggs), lambda t: f"p.{t}.events", version="x")
    assert doc["asyncapi"].startswith("3.")
    for agg in aggs:
        channel = doc["channels"][f"{agg.stream_type}Events"]
        assert channel["address"] == f"p.{agg.stream_type}.events"
        assert set(channel["messages"]) == set(agg.contract.events)
        for name, model in agg.contract.events.items():
            message = doc["components"]["messages"][f"{agg.stream_type}.{name}"]
            assert message["payload"]["allOf"][1]["properties"]["type"] == {"const": name}
            assert doc["components"]["schemas"][f"{agg.stream_type}.{name}"] == model.model_json_schema()
    # Every $ref resolves inside the document.
    text = orjson.dumps(doc).decode()
    for ref in {part.split('"')[0] for part in text.split('"$ref":"#/')[1:]}:
        node = doc
        for key in ref.split("/"):
            node = node[key]


def test_default_registry_has_account_only() -> None:
    doc = document((a.contract for a in default_aggregates()), lambda t: t, version="x")
    assert list(doc["channels"]) == ["accountEvents"]
