"""Apply the Alembic migrations of the write store and the read store."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from eventfold.db import create_engine

Target = Literal["write", "read"]
_HERE = Path(__file__).parent / "migrations"


def alembic_config(target: Target) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / target))
    cfg.attributes["target"] = target
    return cfg


async def upgrade(url: str, target: Target, revision: str = "head") -> None:
    """Upgrade one store; safe to run from several processes on PostgreSQL."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes starting at once must not both create tables.
                await conn.exec_driver_sql(
                    f"SELECT pg_advisory_xact_lock({7301 if target == 'write' else 7302})"
                )
            await conn.run_sync(_run, target, revision)
    finally:
        await engine.dispose()


def _run(conn: Connection, target: Target, revision: str) -> None:
    cfg = alembic_config(target)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


async def upgrade_all(write_url: str, read_url: str) -> None:
    await upgrade(write_url, "write")
    await upgrade(read_url, "read")
