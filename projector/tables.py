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
