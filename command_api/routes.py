"""HTTP routes of the command API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from command_api import batch
from command_api.bodies import request_body
from command_api.bootstrap import CommandSide
from command_api.deps import SideDep
from command_api.sending import STREAM_ID, answer, expected_version, parse_body, pending_command
from eventfold import jsonutil
from eventfold.aggregate import Aggregates
from eventfold.auth import CommandWriter, Reader, require
from eventfold.direct_route import RequestParams, served_by
from eventfold.observability import command_seconds, metrics_response
from eventfold.problems import PROBLEM_RESPONSES, Problem

router = APIRouter()


class EventRef(BaseModel):
    event_id: str
    type: str
    version: int


class CommandResult(BaseModel):
    stream_type: str
    stream_id: str
    version: int
    events: list[EventRef]
    position: str | None
    published: bool


class StreamView(BaseModel):
    stream_type: str
    stream_id: str
    version: int
    state: dict[str, Any]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps(body), status_code=status, media_type="application/json", headers=headers)


# What a command route may answer besides 200 and 202; 404 only for a stream type no route serves.
_COMMAND_PROBLEMS = (400, 401, 403, 409, 413, 422, 503)


def command_router(aggregates: Aggregates) -> APIRouter:
    """`POST /commands/<stream_type>/{stream_id}` for each stream type, with its body documented.

    One route per stream type, so each has its own request body schema
    (command_api/bodies.py); a last, undocumented route answers every other
    stream type with 404. All of them run the same `_timed_send`. A stream
    type's route reads its arguments itself (`served_by`, `_command_arguments`):
    the hot path skips FastAPI's per-request dependency solving.
    """
    commands = APIRouter()
    for aggregate in aggregates:
        stream_type = aggregate.stream_type
        commands.add_api_route(
            f"/commands/{stream_type}/{{stream_id}}",
            _sender(stream_type),
            methods=["POST"],
            response_model=CommandResult,
            responses={
                202: {"model": CommandResult, "description": "Durable, not yet acknowledged by Kafka"},
                **{k: v for k, v in PROBLEM_RESPONSES.items() if k in _COMMAND_PROBLEMS},
            },
            summary=f"Send a command to {stream_type}/{{stream_id}}",
            description=f"Send a command to one `{stream_type}` stream; answers with the events it appended.",
            operation_id=f"send_{stream_type}_command",
            openapi_extra={"requestBody": request_body(stream_type)},
            route_class_override=served_by(_command_arguments),
        )
    commands.add_api_route(
        batch.PATH,
        batch.send_batch,
        methods=["POST"],
        response_model=batch.BatchResult,
        responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (400, 401, 403, 413, 422)},
        summary="Send many commands",
        operation_id="send_commands",
        openapi_extra={"requestBody": batch.request_body()},
    )
    commands.add_api_route(
        "/commands/{stream_type}/{stream_id}",
        send_command,
        methods=["POST"],
        response_model=CommandResult,
        include_in_schema=False,
    )
    return commands


class _CommandParams(RequestParams):
    """What a command route reads besides its body, with the constraints its signature declares."""

    LOCATIONS: ClassVar[dict[str, tuple[str, str]]] = {
        "stream_id": ("path", "stream_id"),
        "if_match": ("header", "if-match"),
        "idempotency_key": ("header", "idempotency-key"),
    }
    stream_id: Annotated[str, Field(pattern=STREAM_ID)]
    if_match: Annotated[str | None, Field(max_length=64)] = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=255)] = None


_WRITER = require("commands:write")


async def _command_arguments(request: Request) -> dict[str, Any]:
    """The arguments of a stream type's command route (`_sender`), read as FastAPI would."""
    principal = await _WRITER(request)
    params = _CommandParams.read(request)
    return {
        "request": request,
        "side": request.app.state.side,
        "_": principal,
        "stream_id": params.stream_id,
        "if_match": params.if_match,
        "idempotency_key": params.idempotency_key,
    }


def _sender(stream_type: str) -> Callable[..., Awaitable[Response]]:
    async def send(
        request: Request,
        side: SideDep,
        _: CommandWriter,
        stream_id: Annotated[str, Path(pattern=STREAM_ID)],
        if_match: Annotated[str | None, Header(max_length=64)] = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> Response:
        return await _timed_send(request, side, stream_type, stream_id, if_match, idempotency_key)

    return send


async def send_command(
    request: Request,
    side: SideDep,
    _: CommandWriter,
    stream_type: Annotated[str, Path(max_length=64)],
    stream_id: Annotated[str, Path(pattern=STREAM_ID)],
    if_match: Annotated[str | None, Header(max_length=64)] = None,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Response:
    """Send a command to a stream type no route of its own serves: it is unknown, so 404."""
    return await _timed_send(request, side, stream_type, stream_id, if_match, idempotency_key)


async def _timed_send(
    request: Request,
    side: CommandSide,
    stream_type: str,
    stream_id: str,
    if_match: str | None,
    idempotency_key: str | None,
) -> Response:
    """Send a command to one stream; answers with the events it appended."""
    started, outcome_label = time.perf_counter(), "invalid"
    try:
        response, outcome_label = await _send_command(
            request, side, stream_type, stream_id, if_match, idempotency_key
        )
        return response
    finally:
        command_seconds(
            stream_type if stream_type in side.aggregates.registry else "unknown", outcome_label
        ).observe(time.perf_counter() - started)


async def _send_command(
    request: Request,
    side: CommandSide,
    stream_type: str,
    stream_id: str,
    if_match: str | None,
    idempotency_key: str | None,
) -> tuple[Response, str]:
    if stream_type not in side.aggregates.registry:
        raise Problem(404, "unknown_stream_type", f"there is no stream type {stream_type!r}")
    expected = expected_version(if_match)
    command_type, data = parse_body(await request.body())
    pending = pending_command(
        side,
        stream_type,
        stream_id,
        command_type,
        data,
        expected=expected,
        idempotency_key=idempotency_key,
        correlation_id=getattr(request.state, "correlation_id", None),
        traceparent=getattr(request.state, "traceparent", None),
    )
    outcome, published = await side.service.execute(pending)
    answered = answer(outcome, published, expected, request.url.path)
    return answered.response(), answered.label


@router.get(
    "/streams/{stream_type}/{stream_id}",
    response_model=StreamView,
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 404, 422)},
)
async def read_stream(
    side: SideDep,
    _: Reader,
    stream_type: Annotated[str, Path(max_length=64)],
    stream_id: Annotated[str, Path(pattern=STREAM_ID)],
) -> Response:
    """Read the write side's current version and state of one stream."""
    if stream_type not in side.aggregates.registry:
        raise Problem(404, "unknown_stream_type", f"there is no stream type {stream_type!r}")
    found = await side.store.read_stream(stream_type, stream_id)
    if found is None:
        raise Problem(404, "stream_not_found", f"{stream_type}/{stream_id} has no events")
    version, state = found
    body = {"stream_type": stream_type, "stream_id": stream_id, "version": version, "state": state}
    return _json(200, body, {"ETag": f'"{version}"'})


@router.get("/asyncapi.json")
async def read_asyncapi(side: SideDep) -> Response:
    """The AsyncAPI 3 document of the topics this API appends to."""
    from eventfold import __version__
    from eventfold.kafka import asyncapi_cluster
    from schemas.asyncapi import document

    contracts = (a.contract for a in side.aggregates)
    cluster = asyncapi_cluster(side.settings.kafka)
    return _json(200, document(contracts, cluster, version=__version__, schema_root=side.schema_dir))


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of this process."""
    return metrics_response()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: PROBLEM_RESPONSES[503]})
async def readyz(side: SideDep) -> Response:
    """Readiness: the write store answers; the broker's state is reported beside it."""

    async def database() -> str:
        try:
            await asyncio.wait_for(side.store.ping(), 2.0)
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    # Both at once, so a hung broker and a hung database together stay within one timeout.
    db_state, broker_state = await asyncio.gather(database(), side.broker.probe())
    checks = {
        "database": db_state,
        "broker": broker_state,
        "outbox_backlog": str(side.publisher.backlog()),
    }
    if db_state != "ok":
        raise Problem(
            503, "not_ready", "the write store is unreachable", checks=checks, headers={"Retry-After": "2"}
        )
    # Kafka is not needed to accept a command: it is durable in the outbox and
    # answered 202 until Kafka is back, so a broker outage only degrades.
    return _json(200, {"status": "ready", "degraded": broker_state != "ok", "checks": checks})
