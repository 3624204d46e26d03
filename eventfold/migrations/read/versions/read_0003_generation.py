"""read store: projection_status.generation and rebuild progress

Revision ID: read_0003
Revises: read_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0003"
down_revision = "read_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projection_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("rebuild_progress", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rebuild_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projection_status", schema=None) as batch_op:
        batch_op.drop_column("rebuild_detail")
        batch_op.drop_column("rebuild_progress")
        batch_op.drop_column("generation")
