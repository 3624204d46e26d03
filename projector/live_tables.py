"""The live generation's tables: the projector creates them, or adopts the ones it finds.

A projection's read tables are derived data, so no migration creates them:
the projector does, from the declared `Table` objects, when it starts. The
live generation always has the declared names (a blue/green rebuild renames
its tables into them, projector/rebuild.py), so tables an earlier release, a
migration or a rebuild left under those names are adopted as they are.

Tables that do not fit the declaration (a column the handlers write is
missing, say) cannot be written by this release: they are reported, and
only a rebuild to a new declared version replaces them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, delete, inspect, update
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.projection import Projection
from projector import store
from projector.tables import projection_offsets, projection_status

# Serialises projectors creating tables at the same time (the migrations take 7301/7302).
_LOCK_KEY = 7303


@dataclass(frozen=True, slots=True)
class FoundColumn:
    name: str
    required: bool  # NOT NULL and no default: an insert that leaves it out fails


@dataclass(frozen=True, slots=True)
class LiveTables:
    created: bool  # none existed: the projector created them and reads from offset 0
    misfits: tuple[str, ...] = ()  # how the tables found differ from the declaration

    @property
    def fit(self) -> bool:
        return not self.misfits


def misfits(declared: Sequence[Table], found: Mapping[str, Sequence[FoundColumn] | None]) -> list[str]:
    """How the tables found (None: absent) keep the declared handlers from writing them.

    A declared column missing, a table missing, or an undeclared column that
    an insert must fill: each makes every write fail. Undeclared columns that
    may stay empty are left alone.
    """
    out: list[str] = []
    for table in declared:
        columns = found.get(table.name)
        if columns is None:
            out.append(f"table {table.name} does not exist")
            continue
        names = {c.name for c in columns}
        missing = [c.name for c in table.c if c.name not in names]
        if missing:
            out.append(f"{table.name} has no column {', '.join(missing)}")
        required = sorted(c.name for c in columns if c.required and c.name not in table.c)
        if required:
            out.append(f"{table.name} requires the undeclared column {', '.join(required)}")
    return out


async def ensure_live_tables(engine: AsyncEngine, projection: Projection) -> LiveTables:
    """Create the projection's tables if none exist; otherwise say whether those found fit.

    Created tables are empty, so the projection reads its topic from offset 0
    again: offsets stored for tables that are gone describe rows that are gone.
    """
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        found = await conn.run_sync(_columns, [t.name for t in projection.tables])
        if any(cols is not None for cols in found.values()):
            return LiveTables(created=False, misfits=tuple(misfits(projection.tables, found)))
        await conn.run_sync(_create, projection.tables)
        await conn.execute(
            delete(projection_offsets).where(projection_offsets.c.projection == projection.name)
        )
        s = projection_status.c
        await conn.execute(
            update(projection_status)
            .where(s.projection == projection.name, s.state.in_([store.LIVE, store.FAILED]))
            .values(
                version=projection.version,
                events_applied=0,
                last_event_at=None,
                detail=None,
                updated_at=time.time(),
            )
        )
    return LiveTables(created=True)


def _columns(sync: Connection, names: list[str]) -> dict[str, list[FoundColumn] | None]:
    found = inspect(sync)
    out: dict[str, list[FoundColumn] | None] = {}
    for name in names:
        if not found.has_table(name):
            out[name] = None
            continue
        out[name] = [
            FoundColumn(c["name"], not c["nullable"] and c.get("default") is None and not _generated(c))
            for c in found.get_columns(name)
        ]
    return out


def _generated(column: Mapping[str, Any]) -> bool:
    """Filled by the database itself: an identity, a computed or a serial column."""
    return bool(column.get("identity") or column.get("computed") or column.get("autoincrement") is True)


def _create(sync: Connection, tables: Sequence[Table]) -> None:
    for table in tables:
        table.create(sync)
