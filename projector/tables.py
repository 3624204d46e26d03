"""The projector's own tables in the read store: offsets, status and dead letters.

Read-model tables are not here: each projection declares its own.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# The truth about how far each projection has read: written in the same
# transaction as the rows it produced, read back on every assignment.
projection_offsets = Table(
    "projection_offsets",
    metadata,
    Column("projection", String(100), primary_key=True),
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

projection_status = Table(
    "projection_status",
    metadata,
    Column("projection", String(100), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("events_applied", BigInteger, nullable=False, default=0),
    Column("last_event_at", Float),
    Column("detail", Text),
    Column("updated_at", Float, nullable=False),
    # Added by read_0003: which generation of the tables is live, and how far
    # a blue/green rebuild (projector/rebuild.py) has come.
    Column("generation", Integer, nullable=False, server_default="1"),
    Column("rebuild_progress", Float),
    Column("rebuild_detail", Text),
)

projection_failures = Table(
    "projection_failures",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("projection", String(100), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary),
    Column("headers", LargeBinary),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("projection", "topic", "partition", "offset", name="uq_failure_record"),
)

# One row per process-manager instance (projector/process_managers.py): its
# state, the commands it still has to send, its deadline and its status
# (`active`, `done`, `stuck` with the refusal in `reason`). Written in the same
# transaction as the manager's offsets in projection_offsets (keyed `process:<name>`).
process_instances = Table(
    "process_instances",
    metadata,
    Column("process", String(100), primary_key=True),
    Column("instance", String(255), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("state", Text, nullable=False),
    Column("pending", Text, nullable=False),
    Column("deadline", Float),
    Column("reason", Text),
    Column("updated_at", Float, nullable=False),
    Index("ix_process_instances_due", "process", "status", "deadline"),
)

# The change feed of the live read models (query_api/feed.py): one row per
# live batch (or re-drive) that changed documents, written in the batch's
# transaction. `changes` lists them as JSON [[doc_id, version], ...] in the
# order their last events were applied. One row per batch, not per document:
# the feed's rows and index entries were a quarter of the projector's work.
# Every batch of a projection holds its status row until commit
# (projector/store.py lock_state), so the `seq` values of one projection's
# rows become visible in increasing order. A document's position in the feed
# is seq * CHANGE_SLOTS + its place in the row, so a reader that has seen
# position n has seen every change of that projection below n. Every query
# API process tails this table, so a change committed is a change every
# subscriber can be sent, also after a crash right after the commit. Rows past
# the retention are pruned; the highest `seq` pruned per projection is kept in
# view_change_horizons, so a subscriber resuming from before it is told to
# start over (a "reset").
CHANGE_SLOTS = 65_536  # positions per row; a batch changing more takes several rows
view_changes = Table(
    "view_changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("projection", String(100), nullable=False),
    Column("changes", Text, nullable=False),
    Column("committed_at", Float, nullable=False),
    Index("ix_view_changes_tail", "projection", "seq"),
    sqlite_autoincrement=True,
)

view_change_horizons = Table(
    "view_change_horizons",
    metadata,
    Column("projection", String(100), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)
