"""Physical tables of projection generations: same shape, names of their own."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from examples.bank.projection import ACCOUNTS
from examples.bank.tables import accounts
from projector.generations import _metadata, offsets_key, tables_of


def test_generations_get_their_own_tables_indexes_and_offsets_key() -> None:
    g2, g3 = tables_of(ACCOUNTS, 2), tables_of(ACCOUNTS, 3)
    assert [t.name for t in g2] == ["accounts__g2", "account_transactions__g2"]
    assert tables_of(ACCOUNTS, 2) == g2  # derived once
    assert [c.name for c in g2[0].c] == [c.name for c in accounts.c]
    assert [c.name for c in g2[0].primary_key] == ["id"]
    assert {i.name for i in accounts.indexes} == {"ix_accounts_owner_id", "ix_accounts_status_id"}
    engine = create_engine("sqlite://")
    # SQLite, like PostgreSQL, wants index names unique across tables.
    _metadata.create_all(engine, tables=[*g2, *g3])
    found = inspect(engine)
    assert {i["name"] for i in found.get_indexes("accounts__g3")} == {
        "ix_accounts_owner_id__g3",
        "ix_accounts_status_id__g3",
    }
    assert found.get_pk_constraint("account_transactions__g2")["constrained_columns"] == [
        "account_id",
        "version",
    ]
    assert offsets_key("accounts", 2) == "accounts@g2"
