"""The Kafka headers of event records and of dead letters, as AsyncAPI schemas.

Header values are bytes on the wire; every one eventfold writes is UTF-8
text, so each is described as a string. `schemas.mapper.encode_envelope`
writes the event headers and `projector.deadletter` the dead-letter ones; a
unit test holds these descriptions to what they write.
"""

from __future__ import annotations

from typing import Any

from schemas.mapper import cloudevents_source, cloudevents_type

DECIMAL = r"^[1-9][0-9]*$"

# The envelope fields copied into headers, so tools can route and filter
# records without parsing their values. Present on every record eventfold wrote.
ENVELOPE_HEADERS: dict[str, dict[str, Any]] = {
    "event_id": {"format": "uuid", "description": "The event's id (the value's `event_id`)."},
    "stream_type": {"description": "The stream type (the value's `stream_type`)."},
    "stream_id": {"description": "The stream id, also the record key (the value's `stream_id`)."},
    "version": {
        "pattern": DECIMAL,
        "description": "The event's version in its stream, in decimal (the value's `version`).",
    },
    "type": {"description": "The event type (the value's `type`)."},
    "schema_version": {
        "pattern": DECIMAL,
        "description": "The schema version of the value's `data`, in decimal.",
    },
}

OPTIONAL_HEADERS: dict[str, dict[str, Any]] = {
    "correlation_id": {
        "description": "The correlation id of the command behind the event (`X-Correlation-ID`), if any."
    },
    "causation_id": {"description": "The id of the command that caused the event, if any."},
    "traceparent": {
        "description": "W3C trace context of the command's request, when it carried one "
        "(https://www.w3.org/TR/trace-context/)."
    },
}

# CloudEvents 1.0, Kafka protocol binding, binary content mode: the record
# value is the event data (here the whole envelope) and the attributes are
# `ce_*` headers. Records appended before eventfold wrote these lack them.
CLOUDEVENTS_HEADERS: dict[str, dict[str, Any]] = {
    "content-type": {
        "const": "application/json",
        "description": "The value's media type (CloudEvents `datacontenttype`).",
    },
    "ce_specversion": {"const": "1.0", "description": "The CloudEvents version."},
    "ce_id": {"format": "uuid", "description": "CloudEvents `id`: the event id, as `event_id`."},
    "ce_type": {"description": "CloudEvents `type`: `<stream_type>.<type>`, e.g. `account.Deposited`."},
    "ce_source": {"description": "CloudEvents `source`: `eventfold/<stream_type>`."},
    "ce_subject": {"description": "CloudEvents `subject`: the stream id, as `stream_id`."},
    "ce_time": {
        "format": "date-time",
        "description": "CloudEvents `time`: the value's `occurred_at`, RFC 3339.",
    },
}


def event_headers_schema() -> dict[str, Any]:
    """Every header of an event record, whatever its type."""
    described = {**ENVELOPE_HEADERS, **OPTIONAL_HEADERS, **CLOUDEVENTS_HEADERS}
    return {
        "type": "object",
        "description": (
            "Kafka headers of an event record, UTF-8 text: the envelope's identifying fields, "
            "and `content-type` with the CloudEvents attributes `ce_*` (binary content mode of "
            "the CloudEvents Kafka binding), so CloudEvents SDKs read the records as they are. "
            "Only the envelope fields are required: records appended by earlier releases of "
            "eventfold lack the others. The value is authoritative."
        ),
        "properties": {name: {"type": "string", **spec} for name, spec in described.items()},
        "required": list(ENVELOPE_HEADERS),
    }


def typed_headers_schema(stream_type: str, name: str, schema_version: int) -> dict[str, Any]:
    """The headers of one event type at one schema version: the general ones, pinned down."""
    return {
        "allOf": [
            {"$ref": "#/components/schemas/EventHeaders"},
            {
                "type": "object",
                "properties": {
                    "stream_type": {"const": stream_type},
                    "type": {"const": name},
                    "schema_version": {"const": str(schema_version)},
                    "ce_type": {"const": cloudevents_type(stream_type, name)},
                    "ce_source": {"const": cloudevents_source(stream_type)},
                },
            },
        ]
    }


# Why a projection dead-lettered a record (`dlq.reason`).
DEAD_LETTER_REASONS: dict[str, str] = {
    "not_json": "the value is missing or not JSON",
    "invalid_envelope": "the value is JSON but not an event envelope",
    "unknown_stream_type": "the envelope names another stream type than the topic's",
    "unknown_type": "an event type, or a schema version, this release does not know (or no upcaster)",
    "invalid_data": "the event's data does not match its schema",
    "handler_error": "the projection's handler raised on the event",
    "write_rejected": "the read store refused the row the event produced",
}

DEAD_LETTER_HEADERS: dict[str, dict[str, Any]] = {
    "dlq.reason": {
        "description": "Why the record was dead-lettered, a stable code: "
        + "; ".join(f"`{code}`: {why}" for code, why in DEAD_LETTER_REASONS.items())
        + "."
    },
    "dlq.detail": {"description": "What exactly was wrong, for people (at most 2,000 bytes)."},
    "dlq.projection": {"description": "The projection that could not apply the record."},
    "dlq.topic": {"description": "The topic the original record is in."},
    "dlq.partition": {"pattern": r"^(0|[1-9][0-9]*)$", "description": "Its partition, in decimal."},
    "dlq.offset": {"pattern": r"^(0|[1-9][0-9]*)$", "description": "Its offset, in decimal."},
}


def dead_letter_headers_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "The `dlq.*` headers say why and where from; after them come the original record's "
            "headers unchanged (for an event record eventfold wrote, those of EventHeaders, "
            "`content-type` included, although a poison value may not be JSON at all)."
        ),
        "properties": {name: {"type": "string", **spec} for name, spec in DEAD_LETTER_HEADERS.items()},
        "required": list(DEAD_LETTER_HEADERS),
        "additionalProperties": {"type": "string"},
    }
