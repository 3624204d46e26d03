"""Write-side tables: stream heads, the transactional outbox, idempotency keys."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per stream: its version and folded state. An append is a
# compare-and-set on `version`, so two writers of one stream cannot both win.
streams = Table(
    "streams",
    metadata,
    Column("stream_type", String(64), primary_key=True),
    Column("stream_id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Events waiting to be acknowledged by Kafka, written in the command's own
# transaction. (stream_type, stream_id, version) is unique: a version is
# appended once, whatever races.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("stream_type", String(64), nullable=False),
    Column("stream_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("topic", String(255), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("stream_type", "stream_id", "version", name="uq_outbox_stream_version"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)
