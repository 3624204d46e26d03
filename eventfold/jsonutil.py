"""JSON in one place: orjson, with canonical bytes for hashing."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def canonical_hash(value: Any) -> str:
    """A stable digest of a JSON value (sorted keys), for idempotency checks."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
