"""How tables found in the read store are judged against a projection's declaration."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

from projector.live_tables import FoundColumn, misfits

metadata = MetaData()
docs = Table(
    "test_docs",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("version", Integer, nullable=False),
)
rows = Table(
    "test_rows",
    metadata,
    Column("doc_id", String(20), primary_key=True),
    Column("version", Integer, primary_key=True),
)


def _found(*names: str, required: tuple[str, ...] = ()) -> list[FoundColumn]:
    return [FoundColumn(n, n in required) for n in names]


def test_tables_with_the_declared_columns_fit() -> None:
    found = {"test_docs": _found("id", "value", "version"), "test_rows": _found("doc_id", "version")}
    assert misfits([docs, rows], found) == []


def test_an_optional_column_nobody_declared_is_left_alone() -> None:
    found = {"test_docs": _found("id", "value", "version", "note"), "test_rows": _found("doc_id", "version")}
    assert misfits([docs, rows], found) == []


def test_what_keeps_the_handlers_from_writing_is_named() -> None:
    found = {
        "test_docs": _found("id", "version", "legacy", "note", required=("id", "legacy")),
        "test_rows": None,
    }
    assert misfits([docs, rows], found) == [
        "test_docs has no column value",
        "test_docs requires the undeclared column legacy",
        "table test_rows does not exist",
    ]
