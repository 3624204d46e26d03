"""The write store's statements on PostgreSQL: fixed SQL text, one array per column.

SQLAlchemy Core renders `IN (...)` lists and multi-row VALUES anew for every
batch size, and asyncpg then prepares each new shape: at low rates, where
every group commit has a different size, compiling and preparing cost more
CPU than the statements themselves (as the command API's profile showed). With arrays and
`unnest` the text never changes, so it is compiled once and prepared once
per connection, whatever the batch holds.
"""

from __future__ import annotations

from sqlalchemy import text

_KEYS = "unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[])) AS k(t, i)"

# Rows locked in key order, so two processes on the same streams queue rather than deadlock.
HEADS = text(
    "SELECT s.stream_type, s.stream_id, s.version, s.state FROM streams AS s "
    f"JOIN {_KEYS} ON s.stream_type = k.t AND s.stream_id = k.i "
    "ORDER BY s.stream_type, s.stream_id FOR UPDATE OF s"
)

IDEMPOTENCY = text(
    "SELECT key, request_hash, status, response FROM idempotency_keys "
    "WHERE key = ANY(CAST(:k AS varchar[]))"
)

OUTBOX = text(
    "SELECT o.stream_type, o.stream_id, o.version, o.topic, o.value, o.headers, o.created_at "
    f"FROM outbox AS o JOIN {_KEYS} ON o.stream_type = k.t AND o.stream_id = k.i ORDER BY o.id"
)

INSERT_HEADS = text(
    "INSERT INTO streams (stream_type, stream_id, version, state, updated_at) "
    "SELECT * FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[]), "
    "CAST(:s AS text[]), CAST(:u AS float8[]))"
)

# Compare-and-set: a head moves only from the version that was read.
MOVE_HEADS = text(
    "UPDATE streams AS s SET version = n.v, state = n.s, updated_at = n.u "
    "FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:e AS integer[]), "
    "CAST(:v AS integer[]), CAST(:s AS text[]), CAST(:u AS float8[])) AS n(t, i, e, v, s, u) "
    "WHERE s.stream_type = n.t AND s.stream_id = n.i AND s.version = n.e "
    "RETURNING s.stream_id"
)

INSERT_OUTBOX = text(
    "INSERT INTO outbox (stream_type, stream_id, version, topic, value, headers, created_at) "
    "SELECT * FROM unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[]), "
    "CAST(:topic AS varchar[]), CAST(:value AS bytea[]), CAST(:headers AS bytea[]), "
    "CAST(:c AS float8[]))"
)

INSERT_IDEMPOTENCY = text(
    "INSERT INTO idempotency_keys (key, request_hash, status, response, created_at) "
    "SELECT * FROM unnest(CAST(:k AS varchar[]), CAST(:h AS varchar[]), CAST(:st AS integer[]), "
    "CAST(:r AS bytea[]), CAST(:c AS float8[]))"
)

DELETE_OUTBOX = text(
    "DELETE FROM outbox AS o "
    "USING unnest(CAST(:t AS varchar[]), CAST(:i AS varchar[]), CAST(:v AS integer[])) AS k(t, i, v) "
    "WHERE o.stream_type = k.t AND o.stream_id = k.i AND o.version = k.v"
)

SET_RESPONSES = text(
    "UPDATE idempotency_keys AS ik SET status = r.st, response = r.body "
    "FROM unnest(CAST(:k AS varchar[]), CAST(:st AS integer[]), CAST(:r AS bytea[])) AS r(k, st, body) "
    "WHERE ik.key = r.k"
)
