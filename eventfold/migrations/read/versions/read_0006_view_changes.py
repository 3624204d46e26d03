"""read store: view_changes, the change feed live subscriptions are served from

Revision ID: read_0006
Revises: read_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0006"
down_revision = "read_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "view_changes",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("projection", sa.String(100), nullable=False),
        sa.Column("doc_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("committed_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_view_changes_tail", "view_changes", ["projection", "seq"])
    op.create_index("ix_view_changes_doc", "view_changes", ["projection", "doc_id", "seq"])
    op.create_table(
        "view_change_horizons",
        sa.Column("projection", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("view_change_horizons")
    op.drop_index("ix_view_changes_doc", table_name="view_changes")
    op.drop_index("ix_view_changes_tail", table_name="view_changes")
    op.drop_table("view_changes")
