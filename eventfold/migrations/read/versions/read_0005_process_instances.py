"""read store: process_instances, the state of every process-manager instance

Revision ID: read_0005
Revises: read_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0005"
down_revision = "read_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "process_instances",
        sa.Column("process", sa.String(100), primary_key=True),
        sa.Column("instance", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("pending", sa.Text(), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_process_instances_due", "process_instances", ["process", "status", "deadline"])


def downgrade() -> None:
    op.drop_index("ix_process_instances_due", table_name="process_instances")
    op.drop_table("process_instances")
