"""The stream explorer: one stream's events from its topic, its write-side head, its read-model documents.

Three sources side by side, each read as it is now: the topic (what was
published), the write store's `streams` row (what the command API decided:
version and folded state, and how many of its events still wait in the
outbox) and every served projection's document whose id is the stream id
(what the read side made of it). They may differ for a moment; that gap is
what an operator comes here to see.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path
from fastapi.responses import Response
from sqlalchemy import func, select

from command_api.tables import outbox, streams
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api.console.deps import ConsoleDep, Viewer
from query_api.console.stream_records import read_stream_records
from query_api.documents import get_document
from query_api.routing import STREAM_ID, SideDep, json_response

router = APIRouter(prefix="/console/api", tags=["console"])
StreamType = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
StreamId = Annotated[str, Path(pattern=STREAM_ID)]


@router.get("/stream-types")
async def read_stream_types(console: ConsoleDep, _viewer: Viewer) -> Response:
    """The stream types this query API reads, with their event types."""
    return json_response(
        {
            "stream_types": [
                {"name": name, "events": sorted(c.events)} for name, c in console.contracts.items()
            ]
        }
    )


@router.get(
    "/streams/{stream_type}/{stream_id}",
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 404, 422)},
)
async def read_stream(
    side: SideDep, console: ConsoleDep, _viewer: Viewer, stream_type: StreamType, stream_id: StreamId
) -> Response:
    """A stream's events from its topic, its write-side version and state, and its read-model documents."""
    if stream_type not in console.contracts:
        known = ", ".join(console.contracts) or "none"
        raise Problem(404, "unknown_stream_type", f"no stream type {stream_type!r} here (known: {known})")
    kafka = side.settings.kafka
    records = await read_stream_records(kafka, kafka.topic(stream_type), stream_id)
    documents: dict[str, Any] = {}
    for p in side.projections:
        if p.stream_type == stream_type:
            documents[p.name] = await get_document(side.reads, side.documents[p.name], stream_id)
    return json_response(
        {
            "stream_type": stream_type,
            "stream_id": stream_id,
            "topic": {
                "name": records.topic,
                "partition": records.partition,
                "scanned": records.scanned,
                "complete": records.complete,
                "events": records.events,
            },
            "write_side": await _head(console.write_store, stream_type, stream_id),
            "documents": documents,
        }
    )


async def _head(engine: Any, stream_type: str, stream_id: str) -> dict[str, Any] | None:
    """The write store's head of the stream, and its events not yet acknowledged by Kafka."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(streams.c.version, streams.c.state, streams.c.updated_at).where(
                    streams.c.stream_type == stream_type, streams.c.stream_id == stream_id
                )
            )
        ).first()
        if row is None:
            return None
        unpublished = (
            await conn.execute(
                select(func.count())
                .select_from(outbox)
                .where(outbox.c.stream_type == stream_type, outbox.c.stream_id == stream_id)
            )
        ).scalar_one()
    return {
        "version": row.version,
        "state": orjson.loads(row.state),
        "updated_at": row.updated_at,
        "unpublished": unpublished,
    }
