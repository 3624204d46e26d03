"""The documented request bodies of `POST /commands/<stream_type>/{stream_id}`, from the aggregates.

Each stream type gets one schema, `<StreamType>Command`: a `oneOf` of its
commands, discriminated by `type`, each variant with `data` typed by the
command's model. This is the contract only: the route reads and validates the
body itself (command_api/routes.py), so its answers to a body outside this
schema are its own problem+json, not FastAPI's.
"""

from __future__ import annotations

import re
from typing import Any

from command_api.batch import CommandBatch
from eventfold.aggregate import Aggregates
from eventfold.openapi import REF_PREFIX, model_schemas
from schemas.registry import StreamContract


def body_schema_name(stream_type: str) -> str:
    """`account` -> `AccountCommand`, `bank-account` -> `BankAccountCommand`."""
    words = re.split(r"[^A-Za-z0-9]+", stream_type)
    return "".join(w[:1].upper() + w[1:] for w in words) + "Command"


def request_body(stream_type: str) -> dict[str, Any]:
    """The OpenAPI `requestBody` of one stream type's command route."""
    schema = {"$ref": REF_PREFIX + body_schema_name(stream_type)}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def command_schemas(aggregates: Aggregates) -> dict[str, Any]:
    """Every component schema the command bodies refer to, by name."""
    contracts = [a.contract for a in aggregates]
    names, schemas = model_schemas([*(m for c in contracts for m in c.commands.values()), CommandBatch])
    for contract in contracts:
        for name, schema in _stream_schemas(contract, names).items():
            if name in schemas:
                raise ValueError(f"the OpenAPI schema name {name!r} is taken by a command model")
            schemas[name] = schema
    return schemas


def _stream_schemas(contract: StreamContract, data_names: dict[Any, str]) -> dict[str, Any]:
    body = body_schema_name(contract.stream_type)
    out: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for command_type, model in contract.commands.items():
        variant = f"{body}.{command_type}"
        # `data` may be left out when the command has no required field: it defaults to {}.
        needs_data = any(f.is_required() for f in model.model_fields.values())
        out[variant] = {
            "title": variant,
            "type": "object",
            "required": ["type", "data"] if needs_data else ["type"],
            "properties": {
                "type": {"type": "string", "const": command_type},
                "data": {"$ref": REF_PREFIX + data_names[model]},
            },
        }
        mapping[command_type] = REF_PREFIX + variant
    out[body] = {
        "title": body,
        "description": f"A command to one `{contract.stream_type}` stream: "
        "`type` names the command, `data` carries its fields.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return out
