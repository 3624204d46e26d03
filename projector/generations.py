"""Physical tables of a projection generation (groundwork for blue/green rebuilds).

A zero-downtime rebuild (projector/rebuild.py) builds generation n+1
of a projection's tables from offset 0 while generation n keeps serving, then
renames the tables of n away and those of n+1 into their place in one
transaction. The
`Projection` declaration stays generation-agnostic; this module derives the
physical tables of a generation from it: the same columns and keys, the name
suffixed `__g<n>`, and every index and constraint renamed too (PostgreSQL
index names are unique per schema, so two generations cannot share them).
Offsets of a generation under construction live under their own key
(`<projection>@g2`) so they never mix with the live generation's.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Index, MetaData, Table

from eventfold.projection import Projection


def physical_name(table: str, generation: int) -> str:
    return f"{table}__g{generation}"


def offsets_key(projection: str, generation: int) -> str:
    """The `projection_offsets.projection` key of a generation being built."""
    return f"{projection}@g{generation}"


@cache
def _clone(table: Table, generation: int) -> Table:
    name = physical_name(table.name, generation)
    # A metadata of its own: two declarations of one table (a projection's old
    # and new version, in one process) must not meet under one clone name.
    clone = table.to_metadata(MetaData(), name=name)
    for index in list(clone.indexes):
        if index.name is not None and not index.name.endswith(f"__g{generation}"):
            clone.indexes.discard(index)
            Index(
                f"{index.name}__g{generation}", *[clone.c[c.name] for c in index.columns], unique=index.unique
            )
    for constraint in clone.constraints:
        if isinstance(constraint.name, str) and not constraint.name.endswith(f"__g{generation}"):
            constraint.name = f"{constraint.name}__g{generation}"
    return clone


def tables_of(projection: Projection, generation: int) -> list[Table]:
    """The document table, then the child tables, of one generation."""
    return [_clone(t, generation) for t in projection.tables]
