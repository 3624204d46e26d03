"""The Alembic environment both migration sets (write, read) run.

Run through `eventfold.migrate`, which hands over an open connection, so the
same code serves PostgreSQL and SQLite, sync and async drivers.

The read migrations cover the framework's own tables only. The projections'
tables (and the generation tables of a rebuild) are created by the projector
from the projections' declarations (projector/live_tables.py), so Alembic
leaves every other table of the read store alone, even when comparing it
with the metadata.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import MetaData

from command_api.tables import metadata as write_metadata
from projector.tables import projection_failures, projection_offsets, projection_status

READ_TABLES = (projection_offsets, projection_status, projection_failures)


def read_metadata() -> MetaData:
    """The framework's read-store tables, in a metadata of their own."""
    metadata = MetaData()
    for table in READ_TABLES:
        table.to_metadata(metadata)
    return metadata


def include_read_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's filter: only the framework's tables (and their columns, indexes) are compared."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table is None or table in {t.name for t in READ_TABLES}


def run() -> None:
    config = context.config
    target = config.attributes["target"]
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=write_metadata if target == "write" else read_metadata(),
        include_object=None if target == "write" else include_read_object,
        version_table=f"alembic_version_{target}",
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
