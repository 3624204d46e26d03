"""The event envelope: what travels in a Kafka record's value, as JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# Envelope fields that are also copied into Kafka headers, so tools can route
# and filter records without parsing their values.
HEADER_FIELDS = (
    "event_id",
    "stream_type",
    "stream_id",
    "version",
    "type",
    "schema_version",
    "correlation_id",
    "causation_id",
)


class EventEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID
    stream_type: str = Field(min_length=1)
    stream_id: str = Field(min_length=1)
    version: int = Field(ge=1)
    type: str = Field(min_length=1)
    schema_version: int = Field(default=1, ge=1)
    occurred_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    data: dict[str, Any]
