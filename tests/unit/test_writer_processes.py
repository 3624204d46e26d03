"""How many processes write to a store side by side: the projector's members, a replay's workers."""

from __future__ import annotations

import os

import pytest

from eventfold.db import writer_processes

PG = "postgresql://u@localhost/db"


def test_sqlite_has_one_writer_whatever_is_asked() -> None:
    assert writer_processes("sqlite:///x.db", 0) == 1
    assert writer_processes("sqlite+aiosqlite:///x.db", 3) == 1


def test_postgresql_takes_what_is_chosen() -> None:
    assert writer_processes(PG, 3) == 3
    assert writer_processes("postgresql+asyncpg://u@localhost/db", 1) == 1


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (4, 4), (16, 4), (None, 1)])
def test_postgresql_defaults_to_one_per_core_up_to_four(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert writer_processes(PG, 0) == expected
