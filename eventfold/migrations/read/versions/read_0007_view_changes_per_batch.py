"""read store: the change feed keeps one row per batch, listing the documents it changed

A row per document changed cost the projector a quarter of its rate (the row,
its primary key and two indexes, for every document of every batch). A row
per batch carries the same facts: the documents in the order their last
events were applied, each with the version it reached. A subscriber's
position is now the batch's `seq` times 65,536 plus the document's place in
it (query_api/feed.py).

The feed's rows are transient (kept `EVENTFOLD_CHANGE_RETENTION_S`), so the
old rows are dropped rather than converted. The horizon is moved past every
position handed out before, and the new rows are numbered after it, so a
subscriber resuming from an old position is sent a reset (the current state)
instead of missing a change.

Revision ID: read_0007
Revises: read_0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "read_0007"
down_revision = "read_0006"
branch_labels = None
depends_on = None

# Positions per batch row; must match query_api/feed.py and projector/store.py.
_SLOTS = 65_536


def _handed_out(bind: sa.Connection) -> list[tuple[str, int]]:
    """Per projection, the highest `seq` of a row or of its horizon."""
    rows = bind.execute(
        sa.text(
            "SELECT projection, max(seq) FROM ("
            " SELECT projection, seq FROM view_changes"
            " UNION ALL SELECT projection, seq FROM view_change_horizons) AS handed_out"
            " GROUP BY projection"
        )
    ).all()
    return [(str(p), int(s)) for p, s in rows]


def _restart(bind: sa.Connection, horizons: dict[str, int], *, sqlite_sequence: bool = True) -> None:
    """Set each projection's horizon, and number the next rows after every one of them.

    SQLite numbers rows after its `sqlite_sequence` entry only for an
    AUTOINCREMENT table (`sqlite_sequence`); the old table was not one.
    """
    for projection, horizon in horizons.items():
        bind.execute(sa.text("DELETE FROM view_change_horizons WHERE projection = :p"), {"p": projection})
        bind.execute(
            sa.text("INSERT INTO view_change_horizons (projection, seq) VALUES (:p, :s)"),
            {"p": projection, "s": horizon},
        )
    if not horizons:
        return
    first = max(horizons.values()) + 1
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('view_changes', 'seq'), :s, false)"), {"s": first}
        )
    elif sqlite_sequence:
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('view_changes', :s)"), {"s": first - 1}
        )


def _seq() -> sa.Column[int]:
    return sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )


def upgrade() -> None:
    bind = op.get_bind()
    highest = _handed_out(bind)
    op.drop_index("ix_view_changes_doc", table_name="view_changes")
    op.drop_index("ix_view_changes_tail", table_name="view_changes")
    op.drop_table("view_changes")
    op.create_table(
        "view_changes",
        _seq(),
        sa.Column("projection", sa.String(100), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("committed_at", sa.Float(), nullable=False),
        # SQLite would otherwise number the next row 1 once pruning emptied the table.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_view_changes_tail", "view_changes", ["projection", "seq"])
    # Horizons now count batch rows: a subscriber at or after the end of
    # batch h was sent everything pruned. Every old position lies before the
    # end of batch (highest // _SLOTS + 1).
    _restart(bind, {p: s // _SLOTS + 1 for p, s in highest})


def downgrade() -> None:
    # The old feed counted documents, not batches: its rows cannot be rebuilt
    # from these. Subscribers resuming after the downgrade are sent a reset.
    bind = op.get_bind()
    highest = _handed_out(bind)
    op.drop_index("ix_view_changes_tail", table_name="view_changes")
    op.drop_table("view_changes")
    op.create_table(
        "view_changes",
        _seq(),
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
    _restart(bind, {p: (s + 1) * _SLOTS for p, s in highest}, sqlite_sequence=False)
