"""Hot reads built once, which on PostgreSQL skip SQLAlchemy when they run.

A GET by id through SQLAlchemy spent more CPU in the engine (checkout events,
the execution context, a `Row` per result and its processors) than in asyncpg
itself. A `PreparedRead` is compiled once, when the routes are built, to
asyncpg's SQL text and its parameters' order; `Reads` then sends that text on
an asyncpg pool of its own, and asyncpg prepares it once per connection.

It takes that path only where SQLAlchemy would hand the values through
untouched: every column and every parameter of a type asyncpg returns and
takes as the Python value SQLAlchemy would give (text, integers, booleans,
floats, decimals, dates, times, intervals). Any other type (JSON, UUID,
binary, a `TypeDecorator`) makes the read run through SQLAlchemy, as does
SQLite, so what a read returns does not depend on the path it took.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    Interval,
    Numeric,
    Select,
    String,
    Time,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.types import TypeEngine

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


def _passes_through(t: TypeEngine[Any]) -> bool:
    """Whether asyncpg's value for a column of type `t` is what SQLAlchemy would return."""
    if isinstance(t, TypeDecorator):
        return False
    if isinstance(t, Float):
        return not t.asdecimal
    if isinstance(t, Numeric):
        return bool(t.asdecimal)
    return isinstance(t, String | Integer | Boolean | DateTime | Date | Time | Interval)


@dataclass(frozen=True)
class PreparedRead:
    """One SELECT, with its values named as bind parameters, ready for either path.

    `sql` and `names` are asyncpg's text and the order of its `$n` values;
    `sql` is None when the read must go through SQLAlchemy. `defaults` are the
    values written into the statement itself (a LIMIT, a literal filter).
    """

    statement: Select[Any]
    sql: str | None = field(repr=False)
    names: tuple[str, ...] = field(repr=False)
    defaults: Mapping[str, Any] = field(repr=False)

    @classmethod
    def of(cls, statement: Select[Any]) -> PreparedRead:
        compiled = statement.compile(dialect=_DIALECT)
        binds = compiled.binds
        direct = (
            all(_passes_through(c.type) for c in statement.selected_columns)
            and all(_passes_through(b.type) for b in binds.values())
            # Rendered per call (an IN list's values, a literal-executed LIMIT): no fixed text.
            and "POSTCOMPILE" not in compiled.string
        )
        names = tuple(compiled.positiontup or ())
        defaults = {n: binds[n].effective_value for n in names if not binds[n].required}
        return cls(statement, compiled.string if direct else None, names, defaults)

    def arguments(self, params: Mapping[str, Any] | None) -> list[Any]:
        """The values of `$1..$n`: `params` by name, else what the statement holds."""
        given = params or {}
        return [given[n] if n in given else self.defaults[n] for n in self.names]
