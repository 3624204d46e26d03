"""read store: the migrations keep the framework's tables; projections own theirs

Revision ID: read_0004
Revises: read_0003

A projection's read tables are derived data: the projector creates them from
the projection's declaration when it starts (projector/live_tables.py), so
the read migrations keep only the framework's own tables (projection_offsets,
projection_status, projection_failures).

read_0001 and read_0002 created the bank example's tables, `accounts` and
`account_transactions`. A store that ever projected into them keeps them, and
its rows: the projector adopts them as the live generation, with no rebuild.
Where nothing was ever projected into them (both empty and no offsets stored
for the `accounts` projection: a fresh store, or one whose projector never
wrote), they are dropped, so a fresh store holds no bank tables; a projector
serving the bank creates them again on start.

The downgrade creates them again, as read_0003 left them, where they are
missing, so read_0001's downgrade finds what it drops.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0004"
down_revision = "read_0003"
branch_labels = None
depends_on = None

_BANK_TABLES = ("accounts", "account_transactions")


def upgrade() -> None:
    conn = op.get_bind()
    present = [t for t in _BANK_TABLES if sa.inspect(conn).has_table(t)]
    if not present or _ever_projected(conn, present):
        return
    if conn.dialect.name == "postgresql":
        # A projector still running the previous release must not write
        # between the check and the drop: check again under the lock.
        quote = conn.dialect.identifier_preparer.quote
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(quote(t) for t in present)} IN ACCESS EXCLUSIVE MODE")
        if _ever_projected(conn, present):
            return
    for table in present:
        op.drop_table(table)


def _ever_projected(conn: sa.Connection, tables: list[str]) -> bool:
    """A row in a bank table, or an offset stored for the `accounts` projection."""
    quote = conn.dialect.identifier_preparer.quote
    for table in tables:
        if conn.exec_driver_sql(f"SELECT 1 FROM {quote(table)} LIMIT 1").first() is not None:
            return True
    offsets = sa.table("projection_offsets", sa.column("projection"))
    stored = sa.select(sa.literal(1)).where(offsets.c.projection == "accounts").limit(1)
    return conn.execute(stored).first() is not None


def downgrade() -> None:
    conn = op.get_bind()
    if not sa.inspect(conn).has_table("accounts"):
        op.create_table(
            "accounts",
            sa.Column("id", sa.String(length=128), nullable=False),
            sa.Column("owner", sa.String(length=200), nullable=False),
            sa.Column("balance", sa.BigInteger(), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_accounts_owner_id", "accounts", ["owner", "id"], unique=False)
        op.create_index("ix_accounts_status_id", "accounts", ["status", "id"], unique=False)
    if not sa.inspect(conn).has_table("account_transactions"):
        op.create_table(
            "account_transactions",
            sa.Column("account_id", sa.String(length=128), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("type", sa.String(length=40), nullable=False),
            sa.Column("amount", sa.BigInteger(), nullable=False),
            sa.Column("balance_after", sa.BigInteger(), nullable=False),
            sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("reference", sa.String(length=200), nullable=False, server_default=""),
            sa.PrimaryKeyConstraint("account_id", "version"),
        )
