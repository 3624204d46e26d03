"""HTTP routes of the query API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from eventfold.auth import Admin, require
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api import views
from query_api.routing import SideDep, json_response
from query_api.status import process_manager_report, projection_report, reactor_report

router = APIRouter()
CanRead = Depends(require("read"))


@router.get("/projections", dependencies=[CanRead])
async def read_projections(side: SideDep) -> Response:
    """Each projection's, reactor's and process manager's state, offsets, lag and failures."""
    kafka, marks = side.settings.kafka, side.watermarks
    report = await projection_report(side.engine, side.projections, kafka, marks)
    reactors = await reactor_report(side.engine, side.reactors, kafka, marks)
    managers = await process_manager_report(side.engine, side.process_managers, kafka, marks)
    return json_response({"projections": report, "reactors": reactors, "process_managers": managers})


class RebuildStarted(BaseModel):
    projection: str
    generation: int


@router.post(
    "/projections/{name}/rebuild",
    status_code=202,
    response_model=RebuildStarted,
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 404, 409, 422)},
)
async def rebuild_projection(
    side: SideDep, _admin: Admin, name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
) -> Response:
    """Start a zero-downtime rebuild of a projection; GET /projections shows its progress."""
    from query_api.rebuilds import start_rebuild

    generation = await start_rebuild(side, name)
    return json_response({"projection": name, "generation": generation}, 202)


@router.get(
    "/process-managers/{name}/instances",
    dependencies=[CanRead],
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 422)},
)
async def read_process_instances(
    side: SideDep,
    name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")],
    status: Annotated[Literal["active", "done", "stuck"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """A process manager's instances (in id order): status, the refusal a stuck one met, deadline, state."""
    from projector.process_store import list_instances

    async with side.engine.connect() as conn:
        rows = await list_instances(conn, name, status, limit)
    return json_response({"process_manager": name, "instances": rows})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of this process."""
    from eventfold.observability import metrics_response

    return metrics_response()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: PROBLEM_RESPONSES[503]})
async def readyz(side: SideDep) -> Response:
    """Readiness: the read store answers (Kafka is only used for the lag of GET /projections)."""
    try:
        await asyncio.wait_for(views.ping(side.engine), 2.0)
    except Exception as exc:
        raise Problem(
            503,
            "not_ready",
            f"the read store is unreachable: {type(exc).__name__}",
            checks={"database": f"unreachable: {type(exc).__name__}"},
            headers={"Retry-After": "2"},
        ) from None
    return json_response({"status": "ready", "checks": {"database": "ok"}})
