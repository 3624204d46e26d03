"""Which reads skip SQLAlchemy on PostgreSQL, and the values they send."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    TypeDecorator,
    Uuid,
    bindparam,
    select,
)

from query_api.prepared import PreparedRead


class Upper(TypeDecorator[str]):
    impl = String
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else value.upper()


metadata = MetaData()
docs = Table(
    "docs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("balance", BigInteger),
    Column("version", Integer),
    Column("amount", Numeric(12, 2)),
    Column("at", DateTime(timezone=True)),
)


def test_a_read_of_plain_columns_is_sent_as_asyncpg_text_with_its_values_in_order() -> None:
    read = PreparedRead.of(
        select(docs)
        .where(docs.c.version == bindparam("v"), docs.c.id > bindparam("after"))
        .limit(bindparam("limit", type_=Integer))
    )
    assert read.sql is not None and "$1" in read.sql and "$3" in read.sql
    assert read.arguments({"limit": 51, "after": "a-1", "v": 3}) == [3, "a-1", 51]


def test_values_written_into_the_statement_are_sent_too() -> None:
    read = PreparedRead.of(select(docs).where(docs.c.id == bindparam("id")).limit(50))
    assert read.arguments({"id": "a-1"}) == ["a-1", 50]


def test_a_missing_value_is_an_error_not_a_null() -> None:
    read = PreparedRead.of(select(docs).where(docs.c.id == bindparam("id")))
    with pytest.raises(KeyError):
        read.arguments({})


@pytest.mark.parametrize(
    "column",
    [
        Column("doc", JSON),
        Column("key", Uuid),
        Column("blob", LargeBinary),
        Column("name", Upper),
        Column("ratio", Numeric(asdecimal=False)),
    ],
    ids=["json", "uuid", "binary", "type-decorator", "numeric-as-float"],
)
def test_a_column_sqlalchemy_converts_keeps_the_read_on_sqlalchemy(column: Column[object]) -> None:
    table = Table(f"t_{column.name}", MetaData(), Column("id", String, primary_key=True), column)
    assert PreparedRead.of(select(table).where(table.c.id == bindparam("id"))).sql is None


def test_a_list_of_values_keeps_the_read_on_sqlalchemy() -> None:
    # An IN list is rendered per call (one placeholder per value): no fixed text to prepare.
    read = PreparedRead.of(select(docs).where(docs.c.id.in_(bindparam("ids", expanding=True))))
    assert read.sql is None
