"""What a read-table column is in JSON: its Python type, and how a stored value is written.

One mapping serves the response schemas, the parsing of filter values and the
shaping of rows, so what the OpenAPI document promises is what a view sends.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    String,
    Time,
    Uuid,
)

from query_api.views import utc

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class ColumnType:
    """`python` is what the column holds (and what a filter value parses to);
    `to_json` turns a stored value into what the JSON encoder writes as its JSON
    form (None: it already is one),
    which the response schema describes as `json`, with `json_format` if set."""

    python: Any
    to_json: Convert | None = None
    json: Any = None  # defaults to `python`
    json_format: str | None = None

    @property
    def schema_type(self) -> Any:
        return self.python if self.json is None else self.json


def _binary(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _total_seconds(value: dt.timedelta) -> float:
    return value.total_seconds()


def _isoformat(value: dt.date | dt.time) -> str:
    return value.isoformat()


def column_type(column: Column[Any]) -> ColumnType:
    """The JSON typing of one column; a type it does not know passes through untouched."""
    t = column.type
    # Subclasses before their bases: Float is a Numeric, Enum a String, Boolean no Integer.
    if isinstance(t, Boolean):
        return ColumnType(bool)
    if isinstance(t, Integer):
        return ColumnType(int, int)
    if isinstance(t, Float):
        return ColumnType(float, float)
    if isinstance(t, Numeric):
        # Text keeps every digit; a JSON number would go through a float.
        return ColumnType(Decimal, str, str, "decimal") if t.asdecimal else ColumnType(float, float)
    if isinstance(t, DateTime):
        # Left a datetime: orjson writes it as ISO 8601 in C, the same text as
        # `iso` at a fraction of its cost on a page of rows.
        return ColumnType(dt.datetime, utc)
    if isinstance(t, Date):
        return ColumnType(dt.date, _isoformat)
    if isinstance(t, Time):
        return ColumnType(dt.time, _isoformat)
    if isinstance(t, Interval):
        return ColumnType(dt.timedelta, _total_seconds, float, "seconds")
    if isinstance(t, Enum) and t.enums:
        return ColumnType(Literal[tuple(t.enums)])
    if isinstance(t, String):
        return ColumnType(str)
    if isinstance(t, LargeBinary):
        return ColumnType(bytes, _binary, str, "base64")
    if isinstance(t, Uuid):
        return ColumnType(uuid.UUID, str)
    if isinstance(t, JSON):
        return ColumnType(Any)
    return ColumnType(Any)


def max_length(column: Column[Any]) -> int | None:
    length = getattr(column.type, "length", None)
    return length if isinstance(length, int) else None


def row_shaper(columns: list[Column[Any]]) -> Callable[[Any], dict[str, Any]]:
    """Rows (positional, in `columns` order) to JSON-typed dicts."""
    names = [str(c.name) for c in columns]  # a plain str: orjson refuses its subclass quoted_name
    converters = [column_type(c).to_json for c in columns]
    if not any(converters):
        return lambda row: dict(zip(names, row, strict=True))
    plan = list(zip(names, converters, strict=True))

    def shape(row: Any) -> dict[str, Any]:
        return {
            name: value if conv is None or value is None else conv(value)
            for (name, conv), value in zip(plan, row, strict=True)
        }

    return shape
