"""Dead letters in the console: list, read one, re-drive one or all.

The rows are `projection_failures`, the same the projector writes and
`eventfold dlq` reads; a re-drive goes through the same code as `eventfold
dlq retry` (`projector/redrive.py` for projections, `projector/reaction_redrive.py`
for reactors), so the version guard still decides what applies.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from sqlalchemy import func, select

from eventfold.problems import PROBLEM_RESPONSES, Problem
from projector.redrive import RetryResult
from projector.tables import projection_failures
from query_api.bootstrap import QuerySide
from query_api.console.deps import ConsoleDep, Operator, Viewer
from query_api.console.records import shown_bytes, shown_headers, shown_key
from query_api.console.resources import ConsoleSide
from query_api.routing import SideDep, json_response

router = APIRouter(prefix="/console/api/dead-letters", tags=["console"])
_F = projection_failures.c
_NAME = r"^[A-Za-z0-9_.:-]{1,100}$"
Name = Annotated[str | None, Query(pattern=_NAME, description="Only this projection's or reactor's.")]
# A BIGINT: anything larger cannot name a row, and would not bind.
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_REFUSALS: dict[int | str, dict[str, Any]] = {
    k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 404, 409, 422)
}


def _shown(row: Any, side: QuerySide) -> dict[str, Any]:
    headers = [(k, v.encode()) for k, v in orjson.loads(row["headers"])] if row["headers"] else []
    return {
        "id": row["id"],
        "name": row["projection"],
        "kind": _kind(side, row["projection"]),
        "topic": row["topic"],
        "partition": row["partition"],
        "offset": row["offset"],
        "reason": row["reason"],
        "detail": row["detail"],
        "created_at": row["created_at"],
        "key": shown_key(row["key"]),
        "headers": shown_headers(headers),
        "value": shown_bytes(row["value"]),
        "redrivable": row["value"] is not None,
    }


def _kind(side: QuerySide, name: str) -> str | None:
    if any(p.name == name for p in side.projections):
        return "projection"
    if any(r.name == name for r in side.reactors):
        return "reactor"
    return None  # recorded by a projection this query API does not serve


@router.get("", responses=_REFUSALS)
async def list_dead_letters(
    side: SideDep,
    _viewer: Viewer,
    name: Name = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    """Recorded failures in stream order, with the reason, the record's headers and value."""
    stmt = select(projection_failures).order_by(_F.projection, _F.topic, _F.partition, _F.offset)
    count = select(func.count()).select_from(projection_failures)
    if name is not None:
        stmt, count = stmt.where(_F.projection == name), count.where(_F.projection == name)
    async with side.engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit))).mappings().all()
        total = (await conn.execute(count)).scalar_one()
    return json_response({"dead_letters": [_shown(r, side) for r in rows], "total": total})


@router.get("/{id}", responses=_REFUSALS)
async def read_dead_letter(side: SideDep, _viewer: Viewer, id: DeadLetterId) -> Response:
    """One recorded failure, with the record's key, headers and value."""
    return json_response(_shown(await _row(side, id), side))


@router.post("/{id}/redrive", responses=_REFUSALS)
async def redrive_dead_letter(
    side: SideDep, console: ConsoleDep, _operator: Operator, id: DeadLetterId
) -> Response:
    """Re-apply one recorded failure through the live path; the version guard decides."""
    row = await _row(side, id)
    result = await _retry(side, console, row["projection"], [id])
    return json_response({"name": row["projection"], **_result(result)})


@router.post("/redrive", responses=_REFUSALS)
async def redrive_dead_letters(
    side: SideDep, console: ConsoleDep, _operator: Operator, name: Name = None
) -> Response:
    """Re-apply every recorded failure (of one projection or reactor, or of all), stream by stream."""
    stmt = select(_F.projection).distinct()
    if name is not None:
        stmt = stmt.where(_F.projection == name)
    async with side.engine.connect() as conn:
        names = sorted((await conn.execute(stmt)).scalars())
    if name is not None and _kind(side, name) is None:
        raise Problem(404, "unknown_name", f"there is no projection or reactor {name!r}")
    results = {n: _result(await _retry(side, console, n, None)) for n in names if _kind(side, n)}
    return json_response({"results": results})


async def _row(side: QuerySide, id: int) -> Any:
    async with side.engine.connect() as conn:
        row = (await conn.execute(select(projection_failures).where(_F.id == id))).mappings().first()
    if row is None:
        raise Problem(404, "dead_letter_not_found", f"there is no dead letter {id}")
    return row


async def _retry(side: QuerySide, console: ConsoleSide, name: str, ids: list[int] | None) -> RetryResult:
    from projector.reaction_redrive import retry_reactor
    from projector.redrive import retry

    reactor = next((r for r in side.reactors if r.name == name), None)
    if reactor is not None:
        return await retry_reactor(console.read_store_writer, reactor, side.settings.kafka, ids)
    projection = next((p for p in side.projections if p.name == name), None)
    if projection is None:
        raise Problem(409, "not_served", f"this query API does not serve {name!r}, so cannot re-drive it")
    try:
        return await retry(console.read_store_writer, projection, ids)
    except RuntimeError as exc:  # rebuilding, or never started: re-drive once it is live
        raise Problem(409, "projection_not_live", str(exc)) from None


def _result(r: RetryResult) -> dict[str, int]:
    return {
        "retried": r.retried,
        "applied": r.applied,
        "duplicates": r.duplicates,
        "still_failing": r.still_failing,
    }
