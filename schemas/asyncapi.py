"""An AsyncAPI 3 document of our topics, generated from the registry.

Other teams consume our topics with their own tools, in any language; this
tells them the cluster, the topic of each stream type and its dead-letter
topic, the key, the headers, and the payload of every schema version of every
event ever released, with the upcasts that bring an older version to the
current one. The current version's schema comes from its model; older ones
from their recorded JSON Schemas (the app's schema_dir, see `schemas.evolution`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.asyncapi_headers import dead_letter_headers_schema, event_headers_schema, typed_headers_schema
from schemas.envelope import EventEnvelope
from schemas.evolution import current_schema, schema_path
from schemas.registry import StreamContract

BINDING = "0.5.0"  # the AsyncAPI Kafka bindings version used throughout

# Kafka security protocol -> AsyncAPI server protocol; SASL mechanism -> security scheme type.
_PROTOCOLS = {
    "PLAINTEXT": "kafka",
    "SASL_PLAINTEXT": "kafka",
    "SSL": "kafka-secure",
    "SASL_SSL": "kafka-secure",
}
_SASL = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


@dataclass(frozen=True)
class Cluster:
    """What the document says about the Kafka cluster and how topics are made on it."""

    bootstrap: str
    topic_of: Callable[[str], str]
    dead_letters_of: Callable[[str], str]
    partitions: int
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    client_certificate: bool = False


def document(
    contracts: Iterable[StreamContract], cluster: Cluster, *, version: str, schema_root: Path | None
) -> dict[str, Any]:
    """The document; older event versions' schemas are read from `schema_root` (an app's schema_dir)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {"DeadLetter": _dead_letter_message()}
    schemas: dict[str, Any] = {
        "EventEnvelope": _envelope_schema(),
        "EventHeaders": event_headers_schema(),
        "DeadLetterHeaders": dead_letter_headers_schema(),
        "StreamId": {"type": "string", "minLength": 1, "description": "The stream id: the record key."},
    }
    for c in sorted(contracts, key=lambda c: c.stream_type):
        events, dead = f"{c.stream_type}Events", f"{c.stream_type}DeadLetters"
        channel_messages: dict[str, Any] = {}
        sent = []
        for name, model in sorted(c.events.items()):
            for v in range(1, model.schema_version + 1):
                message_id = f"{c.stream_type}.{name}.v{v}"
                data, extra = _data_schema(c, name, v, model, schema_root, prefix=message_id)
                schemas[message_id] = data
                schemas.update(extra)
                messages[message_id] = _event_message(c, name, v, model.schema_version, message_id)
                channel_messages[f"{name}.v{v}"] = {"$ref": f"#/components/messages/{message_id}"}
            sent.append({"$ref": f"#/channels/{events}/messages/{name}.v{model.schema_version}"})
        topic = cluster.topic_of(c.stream_type)
        channels[events] = {
            "address": topic,
            "title": f"{c.stream_type} events",
            "description": _events_description(c.stream_type, cluster),
            "messages": channel_messages,
            "bindings": {"kafka": _topic_binding(cluster)},
        }
        channels[dead] = {
            "address": cluster.dead_letters_of(topic),
            "title": f"{c.stream_type} dead letters",
            "description": (
                f"Records of `{topic}` a projection could not apply, copied with their key and "
                "value byte for byte and the reason in `dlq.*` headers. A dead letter goes to the "
                "partition of its original while this topic has as many, else to that partition "
                "modulo this topic's count. Delivery is at least once here too."
            ),
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {"kafka": _topic_binding(cluster)},
        }
        title = c.stream_type[:1].upper() + c.stream_type[1:]
        operations[f"publish{title}Events"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{events}"},
            "summary": "The command API appends the events of accepted commands.",
            "description": (
                "It sends the current schema version of each event; older versions stay in the "
                "topic from earlier releases, so consumers must read every version of the channel."
            ),
            "messages": sent,
        }
        operations[f"deadLetter{title}Events"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{dead}"},
            "summary": "A projection copies a record it cannot apply here, then goes on.",
            "messages": [{"$ref": f"#/channels/{dead}/messages/DeadLetter"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "eventfold event topics",
            "version": version,
            "description": _INFO,
        },
        "defaultContentType": "application/json",
        "servers": {"kafka": _server(cluster)},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": _security_schemes(cluster),
            "correlationIds": {
                "correlationId": {
                    "description": "The correlation id of the command behind the event.",
                    "location": "$message.payload#/correlation_id",
                }
            },
        },
    }


_INFO = """\
Domain events appended by the eventfold command API: one topic per stream type
(`<prefix>.<stream_type>.events`), each record keyed by its stream id, so one
stream's events share a partition in version order 1, 2, 3, ...

The value is the event envelope as JSON (`EventEnvelope`): identity, position in
the stream, time, correlation, and `data`, whose shape is the event's type at
its `schema_version`. Headers repeat the envelope's identifying fields and carry
CloudEvents attributes in binary content mode (`ce_*`, `content-type`).

Delivery is at least once: a record may appear twice. De-duplicate by
(`stream_id`, `version`): skip a version at or below the last one applied to
that stream. Records are never rewritten and the topics keep them forever, so
every schema version ever released may appear; each message below names the
upcasts from its version to the current one. A record a projection cannot apply
is copied to the topic's dead-letter topic (`<topic>.dlq`)."""


def _events_description(stream_type: str, cluster: Cluster) -> str:
    rf = (
        f"replication factor {cluster.replication_factor}"
        if cluster.replication_factor
        else "replication factor min(3, brokers)"
    )
    isr = (
        f"min.insync.replicas {cluster.min_insync_replicas}"
        if cluster.min_insync_replicas
        else "min.insync.replicas min(2, replication factor)"
    )
    return (
        f"Events of `{stream_type}` streams, keyed by stream id: one stream's events share a "
        "partition in version order (1, 2, 3, ...). A version may be redelivered; skip versions "
        "at or below the last one you applied. Older schema versions of an event stay in the "
        f"topic: upcast them. `eventfold topics create` makes it with {cluster.partitions} "
        f"partitions, {rf}, {isr} and unlimited retention (`retention.ms=-1`): replays read "
        "from offset 0. The partition count never changes (it would move streams)."
    )


def _topic_binding(cluster: Cluster) -> dict[str, Any]:
    config: dict[str, Any] = {"retention.ms": -1}
    if cluster.min_insync_replicas:
        config["min.insync.replicas"] = cluster.min_insync_replicas
    binding: dict[str, Any] = {"partitions": cluster.partitions}
    if cluster.replication_factor:
        binding["replicas"] = cluster.replication_factor
    return {**binding, "topicConfiguration": config, "bindingVersion": BINDING}


def _server(cluster: Cluster) -> dict[str, Any]:
    server: dict[str, Any] = {
        "host": "{bootstrap}",
        "protocol": _PROTOCOLS[cluster.security_protocol],
        "description": (
            f"The Kafka cluster the topics live on (security protocol {cluster.security_protocol})."
        ),
        "variables": {
            "bootstrap": {
                "default": cluster.bootstrap,
                "description": "Bootstrap servers, comma-separated host:port (EVENTFOLD_KAFKA_BOOTSTRAP).",
            }
        },
        "bindings": {"kafka": {"bindingVersion": BINDING}},
    }
    schemes = _security_schemes(cluster)
    if schemes:
        server["security"] = [{"$ref": f"#/components/securitySchemes/{name}"} for name in schemes]
    return server


def _security_schemes(cluster: Cluster) -> dict[str, Any]:
    """How eventfold's own clients authenticate: SASL, or else a TLS client certificate."""
    if cluster.security_protocol.startswith("SASL"):
        return {
            "sasl": {
                "type": _SASL[cluster.sasl_mechanism],
                "description": f"SASL {cluster.sasl_mechanism} with a user and password.",
            }
        }
    if cluster.security_protocol == "SSL" and cluster.client_certificate:
        return {"clientCertificate": {"type": "X509", "description": "A TLS client certificate."}}
    return {}


def _event_message(c: StreamContract, name: str, v: int, current: int, message_id: str) -> dict[str, Any]:
    steps = [(s, c.upcasters.get((name, s))) for s in range(v, current)]
    if v == current:
        about = f"The current schema version of `{name}`."
    else:
        about = f"An older schema version of `{name}`; the current one is v{current}. " + " ".join(
            f"v{s} -> v{s + 1}: {_explain(fn)}." for s, fn in steps
        )
    pinned: dict[str, Any] = {
        "type": {"const": name},
        "stream_type": {"const": c.stream_type},
        "schema_version": {"const": v},
        "data": {"$ref": f"#/components/schemas/{message_id}"},
    }
    message: dict[str, Any] = {
        "name": name,
        "title": f"{c.stream_type} {name} v{v}",
        "summary": f"`{name}` at schema_version {v} ({'current' if v == current else 'older'}).",
        "description": about,
        "contentType": "application/json",
        "headers": typed_headers_schema(c.stream_type, name, v),
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/EventEnvelope"},
                {
                    "type": "object",
                    "properties": pinned,
                    # A record of schema version 1 may leave the field out.
                    **({"required": ["schema_version"]} if v > 1 else {}),
                },
            ]
        },
        "correlationId": {"$ref": "#/components/correlationIds/correlationId"},
        "bindings": {"kafka": {"key": {"$ref": "#/components/schemas/StreamId"}, "bindingVersion": BINDING}},
        "x-eventfold-schema-version": v,
        "x-eventfold-current-schema-version": current,
    }
    if steps:
        message["x-eventfold-upcasts"] = [
            {"from": s, "to": s + 1, "upcaster": _qualname(fn), "description": _doc(fn)} for s, fn in steps
        ]
    return message


def _explain(fn: Callable[..., Any] | None) -> str:
    if fn is None:
        return "no upcaster (`eventfold schemas check` fails)"
    return f"`{_qualname(fn)}`" + (f" ({_doc(fn)})" if _doc(fn) else "")


def _qualname(fn: Callable[..., Any] | None) -> str | None:
    return None if fn is None else f"{fn.__module__}.{fn.__qualname__}"


def _doc(fn: Callable[..., Any] | None) -> str:
    text = (getattr(fn, "__doc__", None) or "").strip()
    return text.splitlines()[0].rstrip(".") if text else ""


def _data_schema(
    c: StreamContract, name: str, v: int, model: Any, root: Path | None, *, prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schema of an event's data at version v, with its `$defs` lifted into components."""
    if v == model.schema_version:
        schema = current_schema(model)
    else:
        path = None if root is None else schema_path(root, c.stream_type, name, v)
        if path is None or not path.exists():
            return {"type": "object", "description": f"{name} v{v}: no schema recorded."}, {}
        schema = orjson.loads(path.read_bytes())
    return _lift_defs(schema, prefix)


def _lift_defs(schema: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Point `#/$defs/X` references at components `<prefix>.X`, which resolve in this document."""
    defs = schema.get("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    f"#/components/schemas/{prefix}.{v.removeprefix('#/$defs/')}"
                    if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/")
                    else rewrite(v)
                )
                for k, v in node.items()
                if k != "$defs"
            }
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        return node

    return rewrite(schema), {f"{prefix}.{k}": rewrite(v) for k, v in defs.items()}


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "A record a projection could not apply, as it was, with the reason.",
        "description": (
            "Key and value are the original record's, byte for byte: usually an event envelope "
            "(see the events channel), but a poison value may be anything, even not JSON. The "
            "`dlq.*` headers say why and where from; the original's headers follow. "
            "`eventfold dlq list` and `eventfold dlq retry` work from the read store's copy."
        ),
        "contentType": "application/octet-stream",
        "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
        "payload": {"description": "The original record's value, byte for byte."},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The original record's key (the stream id, for records "
                    "eventfold wrote); absent when the original had none.",
                },
                "bindingVersion": BINDING,
            }
        },
    }


def _envelope_schema() -> dict[str, Any]:
    schema: dict[str, Any] = EventEnvelope.model_json_schema()
    return schema
