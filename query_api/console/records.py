"""A Kafka record's parts as the console shows them: text where they are text, base64 where not."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

VALUE_LIMIT = 64 * 1024  # bytes of a value shown; the rest is cut, and said so


def shown_bytes(raw: bytes | None) -> dict[str, Any] | None:
    """`{"json": ...}` for a JSON value, `{"text": ...}` for other UTF-8, `{"base64": ...}` else."""
    if raw is None:
        return None
    cut = raw[:VALUE_LIMIT]
    out: dict[str, Any] = {"bytes": len(raw), "truncated": len(raw) > VALUE_LIMIT}
    try:
        out["json"] = orjson.loads(cut)
        return out
    except orjson.JSONDecodeError:
        pass
    try:
        out["text"] = cut.decode()
    except UnicodeDecodeError:
        out["base64"] = base64.b64encode(cut).decode()
    return out


def shown_key(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode(errors="replace")


def shown_headers(headers: Iterable[tuple[str, bytes]]) -> list[list[str]]:
    return [[k, v.decode(errors="replace")] for k, v in headers]
