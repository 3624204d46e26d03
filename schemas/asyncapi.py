"""An AsyncAPI 3 document of our topics, generated from the registry.

Other teams consume our topics with their own tools; this tells them the
channel per stream type, the key, the headers and every event's payload.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.envelope import HEADER_FIELDS, EventEnvelope
from schemas.registry import StreamContract


def document(contracts: Iterable[StreamContract], topic_of: Any, *, version: str) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"EventEnvelope": _envelope_schema()}
    for c in sorted(contracts, key=lambda c: c.stream_type):
        channel_id = f"{c.stream_type}Events"
        channel_messages = {}
        for name, model in sorted(c.events.items()):
            message_id = f"{c.stream_type}.{name}"
            schemas[message_id] = model.model_json_schema()
            messages[message_id] = {
                "name": name,
                "title": f"{c.stream_type} {name} (schema_version {model.schema_version})",
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/EventHeaders"},
                "payload": {
                    "allOf": [
                        {"$ref": "#/components/schemas/EventEnvelope"},
                        {
                            "type": "object",
                            "properties": {
                                "type": {"const": name},
                                "stream_type": {"const": c.stream_type},
                                "schema_version": {"type": "integer", "maximum": model.schema_version},
                                "data": {"$ref": f"#/components/schemas/{message_id}"},
                            },
                        },
                    ]
                },
                "bindings": {"kafka": {"key": {"type": "string", "description": "the stream id"}}},
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{message_id}"}
        channels[channel_id] = {
            "address": topic_of(c.stream_type),
            "description": (
                f"Events of `{c.stream_type}` streams, keyed by stream id: one stream's events "
                "share a partition in version order (1, 2, 3, ...). A version may be redelivered; "
                "skip versions at or below the last one you applied. Older schema versions of an "
                "event stay in the topic: upcast them."
            ),
            "messages": channel_messages,
        }
        operations[f"consume{c.stream_type.title()}Events"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
        }
    schemas["EventHeaders"] = {
        "type": "object",
        "properties": {h: {"type": "string"} for h in (*HEADER_FIELDS, "traceparent")},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "eventfold event topics",
            "version": version,
            "description": "Domain events appended by the eventfold command API.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _envelope_schema() -> dict[str, Any]:
    schema: dict[str, Any] = EventEnvelope.model_json_schema()
    return schema
