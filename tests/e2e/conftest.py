"""Fixtures of the process-level tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventfold.settings import DatabaseSettings
from tests.conftest import create_database, drop_database


@pytest.fixture
async def own_pg(pg_admin_url: str) -> AsyncIterator[DatabaseSettings]:
    """A PostgreSQL database of the test's own, for both stores."""
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)
