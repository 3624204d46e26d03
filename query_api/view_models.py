"""Response models of the generic views, derived from the tables' columns.

They only describe the responses in the OpenAPI document (the routes send the
rows shaped by query_api/columns.py themselves), so each component schema is
named after its table and types each property as its column does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, JsonValue, create_model
from sqlalchemy import Table

from query_api.columns import column_type


def camel(name: str) -> str:
    """`account_transactions` -> `AccountTransactions`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def row_model(table: Table, kind: str, doc: str) -> type[BaseModel]:
    """One property per column, each required (a NULL is sent as null), typed from the column."""
    fields: dict[str, Any] = {}
    for i, column in enumerate(table.columns):
        ct = column_type(column)
        annotation = ct.schema_type | None if column.nullable else ct.schema_type
        extra: dict[str, JsonValue] | None = {"format": ct.json_format} if ct.json_format else None
        # Positional field names with the column name as alias: any column
        # name works, even one pydantic reserves for itself.
        fields[f"c{i}"] = (
            annotation,
            Field(alias=column.name, title=column.name, description=column.comment, json_schema_extra=extra),
        )
    return create_model(f"{camel(table.name)}{kind}", __doc__=doc, **fields)


def page_model(item: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    return create_model(
        name,
        __doc__=doc,
        items=(list[item], ...),  # type: ignore[valid-type]
        next_cursor=(
            str | None,
            Field(description="Pass as `cursor` for the next page; null on the last page."),
        ),
    )
