from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.processes import ServiceProcess


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Stop every service process a test started, whatever the test's outcome."""
    yield
    while ServiceProcess.live:
        ServiceProcess.live.pop().stop()
