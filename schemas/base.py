"""Base classes for commands (imperative) and events (past tense)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Command(BaseModel):
    """A request to change one stream; its class name is its wire type."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Event(BaseModel):
    """A fact about one stream; `schema_version` says which shape of it this is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: ClassVar[int] = 1
