"""The bank's read tables: one row per account, and its ledger (a child table)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_accounts_owner_id", "owner", "id"),
    Index("ix_accounts_status_id", "status", "id"),
)

account_transactions = Table(
    "account_transactions",
    metadata,
    Column("account_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("type", String(40), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # Deposited/Withdrawn carry a reference since their schema version 2.
    Column("reference", String(200), nullable=False, server_default=""),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("source", String(128), nullable=False),
    Column("target", String(128), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_transfers_status_id", "status", "id"),
    Index("ix_transfers_source_id", "source", "id"),
)

# A transfer's steps, as its saga recorded them: requested, debited, then one of
# completed, failed or compensated.
transfer_steps = Table(
    "transfer_steps",
    metadata,
    Column("transfer_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("step", String(20), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("detail", String(500), nullable=False, server_default=""),
)
