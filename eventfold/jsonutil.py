"""JSON in one place: orjson, with canonical bytes for hashing."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


# Random ids are cut from one read of the OS's randomness per _IDS_PER_READ of
# them: a read per id was a system call per id, three per command.
_IDS_PER_READ = 256
# The variant digit of a version 4 UUID (10xx in binary) for any hex digit.
_VARIANT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}
_ids: list[str] = []


def _fresh_ids() -> list[str]:
    h = os.urandom(16 * _IDS_PER_READ).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


def new_id() -> str:
    """A random (version 4) UUID as text, without building a `uuid.UUID` object.

    Three are made per command on the hot path. `list.pop` is atomic, so
    threads never share an id, and a forked child forgets its parent's.
    """
    while True:
        try:
            return _ids.pop()
        except IndexError:
            _ids.extend(_fresh_ids())


os.register_at_fork(after_in_child=_ids.clear)


def canonical_hash(value: Any) -> str:
    """A stable digest of a JSON value (sorted keys), for idempotency checks."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
