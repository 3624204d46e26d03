"""Additions to the OpenAPI document FastAPI generates, for what routes cannot declare themselves.

FastAPI builds the document from the routes and caches it on the app; an edit
registered here runs on each freshly built document, before it is served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

Document = dict[str, Any]
REF_PREFIX = "#/components/schemas/"


def extend(app: FastAPI, edit: Callable[[Document], None]) -> None:
    """Run `edit` on every document `app.openapi()` builds (once per build, not per request)."""
    build = app.openapi

    def openapi() -> Document:
        cached = app.openapi_schema
        doc = build()
        if doc is not cached:
            edit(doc)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def add_schemas(doc: Document, schemas: dict[str, Any]) -> None:
    """Put `schemas` under `components/schemas`; a name already used for another schema is an error."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.items():
        if components.get(name, schema) != schema:
            raise ValueError(f"two different OpenAPI schemas are named {name!r}")
        components[name] = schema
    doc["components"]["schemas"] = dict(sorted(components.items()))


def model_schemas(models: Iterable[type[BaseModel]]) -> tuple[dict[type[BaseModel], str], dict[str, Any]]:
    """The component name of each model and every schema they need, referenced as components.

    Generated together, so two models of the same name get distinct names.
    """
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema([(m, "validation") for m in unique], ref_template=REF_PREFIX + "{model}")
    names = {m: refs[(m, "validation")]["$ref"].removeprefix(REF_PREFIX) for m in unique}
    return names, top.get("$defs", {})
