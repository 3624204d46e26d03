"""The AsyncAPI document: generated from the registry, checked in, served."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel

from eventfold.cli.main import asyncapi_document
from eventfold.kafka import asyncapi_cluster, dlq_topic
from eventfold.settings import KafkaSettings, Settings
from examples.bank.contracts import ACCOUNT
from projector.batch import Failure
from projector.deadletter import dead_letter_headers
from schemas.asyncapi import Cluster, document
from schemas.asyncapi_headers import DEAD_LETTER_REASONS
from schemas.base import Event
from schemas.evolution import current_schema
from schemas.mapper import encode_envelope
from schemas.registry import StreamContract, declare_stream
from tests.support.bank import bank, default_aggregates
from tests.support.counter import with_counter

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "schemas" / "asyncapi.json"


def defaults() -> KafkaSettings:
    """The settings' defaults, whatever EVENTFOLD_* variables this process has."""
    return KafkaSettings.model_construct()


def spec(contracts: list[StreamContract], kafka: KafkaSettings) -> dict[str, Any]:
    """The document of these contracts on this cluster, older versions from the bank's history."""
    return document(contracts, asyncapi_cluster(kafka), version="x", schema_root=bank.schema_dir)


def cluster(**over: Any) -> Cluster:
    fields: dict[str, Any] = {
        "bootstrap": "b:9092",
        "topic_of": lambda t: f"p.{t}.events",
        "dead_letters_of": dlq_topic,
        "partitions": 4,
    }
    return Cluster(**{**fields, **over})


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for key in ref.removeprefix("#/").split("/"):
        node = node[key]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        here = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return here + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_checked_in_document_matches_the_registry() -> None:
    current = asyncapi_document(bank, Settings.model_construct(kafka=defaults()))
    assert CHECKED_IN.read_text().strip() == current, (
        "run `eventfold asyncapi --output schemas/asyncapi.json` with no EVENTFOLD_* variables set"
    )


def test_every_schema_version_of_every_event_is_a_message() -> None:
    aggs = with_counter()
    doc = document((a.contract for a in aggs), cluster(), version="x", schema_root=bank.schema_dir)
    assert doc["asyncapi"] == "3.0.0"
    for agg in aggs:
        events = doc["channels"][f"{agg.stream_type}Events"]
        assert events["address"] == f"p.{agg.stream_type}.events"
        expected = {
            f"{n}.v{v}" for n, m in agg.contract.events.items() for v in range(1, m.schema_version + 1)
        }
        assert set(events["messages"]) == expected
        for name, model in agg.contract.events.items():
            for v in range(1, model.schema_version + 1):
                message = doc["components"]["messages"][f"{agg.stream_type}.{name}.v{v}"]
                pinned = message["payload"]["allOf"][1]["properties"]
                assert pinned["type"] == {"const": name} and pinned["schema_version"] == {"const": v}
                data = resolve(doc, pinned["data"]["$ref"])
                if v == model.schema_version:
                    assert data == current_schema(model)
                else:
                    assert bank.schema_dir is not None
                    recorded = bank.schema_dir / agg.stream_type / f"{name}.v{v}.json"
                    assert data == orjson.loads(recorded.read_bytes())
        # The command API sends the current versions only.
        sent = doc["operations"][f"publish{agg.stream_type.title()}Events"]
        assert sent["action"] == "send"
        assert {resolve(doc, m["$ref"])["$ref"] for m in sent["messages"]} == {
            f"#/components/messages/{agg.stream_type}.{n}.v{m.schema_version}"
            for n, m in agg.contract.events.items()
        }
    for ref in refs(doc):
        resolve(doc, ref)


def test_older_versions_name_the_upcasts_to_the_current_one(tmp_path: Path) -> None:
    class Moved(Event):
        schema_version: ClassVar[int] = 3
        to: str
        why: str

    def add_to(data: dict[str, Any]) -> dict[str, Any]:
        """v1 -> v2: the destination was implied."""
        return {**data, "to": "home"}

    def add_why(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "why": ""}

    contract = declare_stream("thing", [], [Moved], {("Moved", 1): add_to, ("Moved", 2): add_why})
    recorded = {"type": "object", "properties": {"to": {"type": "string"}}}
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "Moved.v2.json").write_bytes(orjson.dumps(recorded))
    doc = document([contract], cluster(), version="x", schema_root=tmp_path)
    messages = doc["components"]["messages"]
    first, second, third = (messages[f"thing.Moved.v{v}"] for v in (1, 2, 3))
    assert [(u["from"], u["to"]) for u in first["x-eventfold-upcasts"]] == [(1, 2), (2, 3)]
    assert first["x-eventfold-upcasts"][0]["upcaster"].endswith("add_to")
    assert first["x-eventfold-upcasts"][0]["description"] == "v1 -> v2: the destination was implied"
    assert "v1 -> v2" in first["description"] and "v2 -> v3" in first["description"]
    assert [(u["from"], u["to"]) for u in second["x-eventfold-upcasts"]] == [(2, 3)]
    assert "x-eventfold-upcasts" not in third
    schemas = doc["components"]["schemas"]
    assert schemas["thing.Moved.v2"] == recorded
    assert "no schema recorded" in schemas["thing.Moved.v1"]["description"]
    # Records of version 1 may leave schema_version out; later ones carry it.
    assert "required" not in first["payload"]["allOf"][1]
    assert third["payload"]["allOf"][1]["required"] == ["schema_version"]


def test_nested_models_resolve_inside_the_document() -> None:
    class Line(BaseModel):
        sku: str

    class Ordered(Event):
        lines: list[Line]

    doc = document([declare_stream("order", [], [Ordered])], cluster(), version="x", schema_root=None)
    schema = doc["components"]["schemas"]["order.Ordered.v1"]
    assert "$defs" not in schema
    line = resolve(doc, schema["properties"]["lines"]["items"]["$ref"])
    assert line["properties"]["sku"]["type"] == "string"
    for ref in refs(doc):
        resolve(doc, ref)


def test_servers_and_topic_bindings_come_from_the_kafka_settings() -> None:
    plain = spec([ACCOUNT], defaults())
    server = plain["servers"]["kafka"]
    assert (server["host"], server["protocol"]) == ("{bootstrap}", "kafka")
    assert server["variables"]["bootstrap"]["default"] == "127.0.0.1:9092"
    assert "security" not in server
    binding = plain["channels"]["accountEvents"]["bindings"]["kafka"]
    assert binding == {"partitions": 4, "topicConfiguration": {"retention.ms": -1}, "bindingVersion": "0.5.0"}

    kafka = KafkaSettings.model_construct(
        kafka_bootstrap="k1:9093,k2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        partitions=12,
        replication_factor=3,
        min_insync_replicas=2,
        topic_prefix="shop",
    )
    secure = spec([ACCOUNT], kafka)
    server = secure["servers"]["kafka"]
    assert server["protocol"] == "kafka-secure"
    assert server["variables"]["bootstrap"]["default"] == "k1:9093,k2:9093"
    assert [resolve(secure, s["$ref"])["type"] for s in server["security"]] == ["scramSha512"]
    for channel, address in [
        ("accountEvents", "shop.account.events"),
        ("accountDeadLetters", "shop.account.events.dlq"),
    ]:
        assert secure["channels"][channel]["address"] == address
        assert secure["channels"][channel]["bindings"]["kafka"] == {
            "partitions": 12,
            "replicas": 3,
            "topicConfiguration": {"retention.ms": -1, "min.insync.replicas": 2},
            "bindingVersion": "0.5.0",
        }


def test_a_client_certificate_is_the_security_scheme_without_sasl() -> None:
    kafka = KafkaSettings.model_construct(kafka_security_protocol="SSL", kafka_ssl_certfile=Path("c.pem"))
    doc = spec([ACCOUNT], kafka)
    (scheme,) = doc["servers"]["kafka"]["security"]
    assert resolve(doc, scheme["$ref"])["type"] == "X509"
    assert (
        "security"
        not in spec([ACCOUNT], kafka.model_copy(update={"kafka_ssl_certfile": None}))["servers"]["kafka"]
    )


def test_the_event_headers_described_are_those_written() -> None:
    doc = spec([ACCOUNT], defaults())
    described = doc["components"]["schemas"]["EventHeaders"]
    fields: dict[str, Any] = {
        "event_id": "0b7e4f1e-4c5a-4d1e-9b5e-0c1f2a3b4c5d",
        "stream_type": "account",
        "stream_id": "a-1",
        "version": 3,
        "type": "Deposited",
        "schema_version": 2,
        "occurred_at": datetime(2026, 12, 1, 12, 30, tzinfo=UTC),
        "data": {"amount": 5, "reference": ""},
    }
    _, fewest = encode_envelope(**fields, correlation_id=None, causation_id=None)
    _, most = encode_envelope(**fields, correlation_id="c", causation_id="k")
    assert set(described["properties"]) == {k for k, _ in most} | {"traceparent"}
    assert set(described["required"]) <= {k for k, _ in fewest}
    for name, value in most:
        header = described["properties"][name]
        assert header.get("const", value.decode()) == value.decode()
        assert re.match(header.get("pattern", ""), value.decode())
    typed = doc["components"]["messages"]["account.Deposited.v2"]["headers"]["allOf"][1]["properties"]
    assert {k: v["const"] for k, v in typed.items()} == {name: dict(most)[name].decode() for name in typed}


def test_the_dead_letter_headers_described_are_those_written() -> None:
    doc = spec([ACCOUNT], defaults())
    described = doc["components"]["schemas"]["DeadLetterHeaders"]
    f = Failure("t", 1, 2, "not_json", "bad", b"k", b"v", (("event_id", b"e"), ("dlq.reason", b"old")))
    written = dead_letter_headers("accounts", f)
    ours = [k for k, _ in written if k.startswith("dlq.")]
    assert ours == list(described["properties"]) == described["required"]
    assert ("event_id", b"e") in written  # the original's headers follow
    message = doc["components"]["messages"]["DeadLetter"]
    assert message["headers"] == {"$ref": "#/components/schemas/DeadLetterHeaders"}
    assert doc["channels"]["accountDeadLetters"]["messages"] == {
        "DeadLetter": {"$ref": "#/components/messages/DeadLetter"}
    }


def test_every_dead_letter_reason_the_projector_gives_is_described() -> None:
    code = "\n".join(
        p.read_text() for p in [*(ROOT / "projector").glob("*.py"), ROOT / "schemas" / "mapper.py"]
    )
    given = set(re.findall(r'(?:_poison|failed)\(\s*\w+,\s*"(\w+)"', code))
    given |= set(re.findall(r'PoisonRecord\("(\w+)"', code))
    # A version gap is recorded for re-drive, never dead-lettered (Failure.dead_letter).
    assert "version_gap" in given and not Failure("t", 0, 0, "version_gap", "").dead_letter
    assert given - {"version_gap"} == set(DEAD_LETTER_REASONS)


def test_default_registry_has_accounts_and_transfers() -> None:
    doc = document((a.contract for a in default_aggregates()), cluster(), version="x", schema_root=None)
    assert list(doc["channels"]) == [
        "accountEvents",
        "accountDeadLetters",
        "transferEvents",
        "transferDeadLetters",
    ]
