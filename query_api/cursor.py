"""Opaque keyset cursors: the last key of a page, tagged with what it pages."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson


class InvalidCursor(ValueError):
    pass


def encode(kind: str, key: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *key])).rstrip(b"=").decode()


def decode(kind: str, token: str, types: tuple[type, ...]) -> list[Any]:
    """The key a cursor carries; InvalidCursor unless we issued it for `kind`."""
    if not token or len(token) > 1024:
        raise InvalidCursor("cursor is empty or too long")
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc
    if not isinstance(raw, list) or len(raw) != len(types) + 1 or raw[0] != kind:
        raise InvalidCursor("cursor is not one this service issued for this listing")
    key = raw[1:]
    if not all(type(v) is t for v, t in zip(key, types, strict=True)):
        raise InvalidCursor("cursor is not one this service issued for this listing")
    return key
