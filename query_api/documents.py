"""Reads of any projection's tables: one SELECT per call, built from the declared table.

A blue/green rebuild renames the new generation's tables into the declared
names (projector/rebuild.py), so the declared tables are always the live
generation: a statement names the table, and the database resolves it to
whichever generation holds that name when the statement runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Integer, Select, Table, and_, bindparam, select

from eventfold.problems import Problem
from eventfold.projection import Projection
from query_api.columns import row_shaper
from query_api.prepared import PreparedRead
from query_api.views import Reads, utc

Page = tuple[list[dict[str, Any]], bool]  # the rows, and whether more follow


@dataclass(frozen=True)
class ChildTable:
    """Rows a document appends: keyed by the document's id, then its version."""

    table: Table
    doc_id: Column[Any]
    version: Column[Any]
    version_at: int  # where the version is in a row of the table
    shape: Callable[[Any], dict[str, Any]] = field(repr=False)

    @classmethod
    def of(cls, table: Table) -> ChildTable:
        key = list(table.primary_key.columns)
        if len(key) < 2:
            raise ValueError(f"child table {table.name!r} needs a primary key of (document id, version)")
        columns = list(table.columns)
        return cls(table, key[0], key[1], columns.index(key[1]), row_shaper(columns))


@dataclass(frozen=True)
class DocumentTable:
    """A projection's document table and its child tables, ready to query."""

    name: str
    table: Table
    filters: tuple[str, ...]
    children: Mapping[str, ChildTable]
    shape: Callable[[Any], dict[str, Any]] = field(repr=False)
    # The read by id, built once: the hot GET sends only its value.
    by_id: PreparedRead = field(repr=False)
    # Listings and child reads, built once per shape (which filters, whether after a key).
    shapes: dict[tuple[Any, ...], PreparedRead] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, projection: Projection) -> DocumentTable:
        table = projection.doc_table
        return cls(
            projection.name,
            table,
            tuple(projection.filters),
            {t.name: ChildTable.of(t) for t in projection.child_tables},
            row_shaper(list(table.columns)),
            PreparedRead.of(select(table).where(table.c.id == bindparam("doc_id"))),
        )

    def shaped(self, key: tuple[Any, ...], build: Callable[[], Select[Any]]) -> PreparedRead:
        """The statement of one shape of read, built the first time it is asked for."""
        found = self.shapes.get(key)
        if found is None:
            found = self.shapes[key] = PreparedRead.of(build())
        return found


def refuse_unknown_filters(docs: DocumentTable, names: Iterable[str]) -> None:
    """A 400 problem naming the parameters that are not declared filters of `docs`."""
    unknown = sorted(set(names) - set(docs.filters))
    if unknown:
        raise Problem(
            400,
            "unknown_filter",
            f"projection {docs.name!r} cannot be filtered on {', '.join(unknown)}; "
            f"allowed filters: {', '.join(docs.filters) or 'none'}",
            allowed_filters=list(docs.filters),
        )


def _bindable(value: Any) -> Any:
    """A filter value as stored: timestamps are kept in UTC (naive ones already are)."""
    return utc(value) if isinstance(value, dt.datetime) else value


async def get_document(reads: Reads, docs: DocumentTable, doc_id: str) -> dict[str, Any] | None:
    rows = await reads.rows(docs.by_id, {"doc_id": doc_id})
    return docs.shape(rows[0]) if rows else None


async def list_documents(
    reads: Reads, docs: DocumentTable, *, where: Mapping[str, Any], after: str | None, limit: int
) -> Page:
    """Documents equal to `where` on its columns, a page in id order after `after`."""
    names = tuple(sorted(where))

    def build() -> Select[Any]:
        t = docs.table
        stmt = select(t).order_by(t.c.id).limit(bindparam("limit", type_=Integer))
        for name in names:
            stmt = stmt.where(t.c[name] == bindparam(f"f_{name}"))
        return stmt if after is None else stmt.where(t.c.id > bindparam("after"))

    stmt = docs.shaped(("list", names, after is not None), build)
    params = {f"f_{name}": _bindable(value) for name, value in where.items()}
    rows = await reads.rows(stmt, {**params, "after": after, "limit": limit + 1})
    return [docs.shape(r) for r in rows[:limit]], len(rows) > limit


async def list_children(
    reads: Reads, docs: DocumentTable, child: ChildTable, doc_id: str, *, after: int | None, limit: int
) -> Page | None:
    """A document's child rows in version order after `after`; None when there is no such document.

    The document is outer-joined to its rows, so one statement answers both
    whether it exists and what it appended: a document without (further) rows
    comes back as a single row whose child columns are all NULL.
    """

    def build() -> Select[Any]:
        t, c = docs.table, child.table
        on = child.doc_id == t.c.id
        if after is not None:
            on = and_(on, child.version > bindparam("after"))
        return (
            select(t.c.id, *c.columns)
            .select_from(t.outerjoin(c, on))
            .where(t.c.id == bindparam("doc_id"))
            .order_by(child.version)
            .limit(bindparam("limit", type_=Integer))
        )

    stmt = docs.shaped(("children", child.table.name, after is not None), build)
    rows = await reads.rows(stmt, {"doc_id": doc_id, "after": after, "limit": limit + 1})
    if not rows:
        return None
    found = [r[1:] for r in rows if r[1 + child.version_at] is not None]
    return [child.shape(r) for r in found[:limit]], len(found) > limit
