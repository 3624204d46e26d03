"""Base classes for commands (imperative) and events (past tense).

Every string a command carries, at any depth, dict keys included, is one
every store can hold: no NUL (PostgreSQL text cannot contain U+0000) and no
unpaired surrogate (not encodable as UTF-8, so neither Kafka's JSON nor a
database can carry it). A command is accepted only if its events can be
projected, so this is refused at the boundary rather than found by the
projector. Lengths are the domain's to bound (`Field(max_length=...)`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

UNSTORABLE = "unstorable_value"
Path = tuple[str | int, ...]


def _flaw(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (U+0000), which the stores cannot hold"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired surrogate, which is not encodable as UTF-8"
    return None


def printable(text: str) -> str:
    """`text` with NUL and surrogates escaped, safe to echo in an error."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def unstorable(value: Any) -> tuple[Path, str] | None:
    """Where the first string no store can hold is in a JSON-like value, and why; None if nowhere.

    Iterative, so a deeply nested body cannot exhaust the interpreter's stack.
    """
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if flaw := _flaw(item):
                return path, flaw
            continue
        if isinstance(item, BaseModel):
            item = item.__dict__
        if isinstance(item, dict):
            children: list[tuple[Path, Any]] = []
            for key, child in item.items():
                here = (*path, printable(key) if isinstance(key, str) else str(key))
                if isinstance(key, str) and (flaw := _flaw(key)):
                    return here, f"key {flaw}"
                children.append((here, child))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(reversed([((*path, i), child) for i, child in enumerate(item)]))
    return None


class Command(BaseModel):
    """A request to change one stream; its class name is its wire type."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Before the fields, so an unknown key holding a NUL is named for the NUL.
        found = unstorable(data)
        if found is not None:
            path, why = found
            where = ".".join(map(str, path)) or "value"
            raise PydanticCustomError(
                UNSTORABLE, "{where}: {why}", {"where": where, "why": why, "path": path}
            )
        return data


class Event(BaseModel):
    """A fact about one stream; `schema_version` says which shape of it this is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: ClassVar[int] = 1
