"""Fixtures of the read-side tests: a store of the test's own on either backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventfold.settings import DatabaseSettings
from tests.conftest import create_database, drop_database, migrated_sqlite


@pytest.fixture(params=["postgres", "sqlite"])
async def own_db(
    request: pytest.FixtureRequest, pg_admin_url: str, tmp_path: Path
) -> AsyncIterator[DatabaseSettings]:
    """Write and read stores no other test touches, so whole tables can be compared."""
    if request.param == "sqlite":
        yield await migrated_sqlite(tmp_path)
        return
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)
