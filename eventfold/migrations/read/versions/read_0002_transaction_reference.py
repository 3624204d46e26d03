"""read store: account_transactions.reference (Deposited/Withdrawn v2)

Revision ID: read_0002
Revises: read_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0002"
down_revision = "read_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference", sa.String(length=200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("account_transactions", schema=None) as batch_op:
        batch_op.drop_column("reference")
