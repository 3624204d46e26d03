"""The Alembic environment both migration sets (write, read) run.

Run through `eventfold.migrate`, which hands over an open connection, so the
same code serves PostgreSQL and SQLite, sync and async drivers.
"""

from __future__ import annotations

from alembic import context

from command_api.tables import metadata as write_metadata
from projector.tables import metadata as read_metadata


def run() -> None:
    config = context.config
    target = config.attributes["target"]
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=write_metadata if target == "write" else read_metadata,
        version_table=f"alembic_version_{target}",
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
