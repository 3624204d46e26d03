"""`POST /commands`: many commands in one request, each answered as its own request would be.

A client ingesting a backlog (an import, a feed of payments) pays for HTTP,
authentication and a round trip once per batch instead of once per command.
Each command is checked, decided and committed exactly as on its stream
type's own route, with the same idempotency keys and the same problems; its
answer takes its place in the response, in the order sent. Commands to one
stream run in the order given, each after the previous one's outcome is
known; commands to different streams run together and share group commits.
A refused command stops nothing else in the batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from command_api.bootstrap import CommandSide
from command_api.deps import SideDep
from command_api.sending import (
    STREAM_ID,
    Answer,
    answer,
    errors,
    errors_text,
    parse_json,
    pending_command,
    problem_answer,
)
from eventfold import jsonutil
from eventfold.auth import CommandWriter
from eventfold.observability import command_seconds
from eventfold.problems import Problem

PATH = "/commands"


class BatchCommand(BaseModel):
    """One command of a batch: its stream, its type and data, and what a single route reads from headers."""

    stream_type: Annotated[str, Field(max_length=64)]
    stream_id: Annotated[str, Field(pattern=STREAM_ID)]
    type: str
    data: dict[str, Any] = {}
    expected_version: Annotated[
        int | None, Field(strict=True, ge=0, le=999_999_999_999, description="as If-Match on a single route")
    ] = None
    # Printable ASCII, as an HTTP header would carry it: the key is stored as text.
    idempotency_key: Annotated[
        str | None,
        Field(pattern=r"^[\x20-\x7e]{1,255}$", description="as Idempotency-Key on a single route"),
    ] = None


class CommandBatch(BaseModel):
    """Commands to send; commands to one stream are applied in this order."""

    commands: list[BatchCommand]


class BatchItemResult(BaseModel):
    """One command's answer: its status, and the result a single route would give or its problem."""

    status: int
    result: dict[str, Any] | None = Field(default=None, description="a CommandResult, for 200 and 202")
    problem: dict[str, Any] | None = Field(default=None, description="a Problem, for 4xx and 5xx")
    replayed: bool = Field(default=False, description="a repeat of an idempotency key: the first answer")


class BatchResult(BaseModel):
    results: list[BatchItemResult]


def request_body() -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/CommandBatch"}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


async def send_batch(request: Request, side: SideDep, _: CommandWriter) -> Response:
    """Send many commands in one request; answers each command's outcome, in the order sent.

    Each item is answered as its own request to `/commands/<stream_type>/{stream_id}`
    would be: `status` 200 (or 202, durable but not yet in Kafka) with `result`, or
    a 4xx/5xx with `problem`. The request itself fails only when its body is not a
    batch (400, 413, 422), and then nothing is appended.
    """
    started = time.perf_counter()
    limit = side.settings.command_api.command_batch_max
    items = _items(parse_json(await request.body()), limit)
    correlation_id = getattr(request.state, "correlation_id", None)
    traceparent = getattr(request.state, "traceparent", None)
    answers: list[Answer | None] = [None] * len(items)
    streams: dict[tuple[str, str], list[tuple[int, BatchCommand]]] = {}
    for i, item in enumerate(items):
        try:
            command = BatchCommand.model_validate(item)
        except ValidationError as exc:
            problem = Problem(422, "invalid_command", errors_text(exc), errors=errors(exc))
            answers[i] = _observed(started, "unknown", problem_answer(problem, _instance(i)))
            continue
        streams.setdefault((command.stream_type, command.stream_id), []).append((i, command))

    async def one_stream(commands: list[tuple[int, BatchCommand]]) -> None:
        for i, command in commands:
            answers[i] = await _send(side, i, command, correlation_id, traceparent, started)

    await asyncio.gather(*(one_stream(commands) for commands in streams.values()))
    results = [_item(a) for a in answers if a is not None]
    return Response(jsonutil.dumps({"results": results}), media_type="application/json")


def _items(body: Any, limit: int) -> list[Any]:
    commands = body.get("commands") if isinstance(body, dict) else None
    if not isinstance(commands, list):
        raise Problem(422, "invalid_batch", 'the body must be an object {"commands": [...]}')
    if not commands:
        raise Problem(422, "invalid_batch", "the batch has no commands")
    if len(commands) > limit:
        raise Problem(
            413, "too_many_commands", f"a batch holds at most {limit} commands, this one {len(commands)}"
        )
    return commands


async def _send(
    side: CommandSide,
    i: int,
    item: BatchCommand,
    correlation_id: str | None,
    traceparent: str | None,
    started: float,
) -> Answer:
    stream_type = item.stream_type if item.stream_type in side.aggregates.registry else "unknown"
    try:
        pending = pending_command(
            side,
            item.stream_type,
            item.stream_id,
            item.type,
            item.data,
            expected=item.expected_version,
            idempotency_key=item.idempotency_key,
            correlation_id=correlation_id,
            traceparent=traceparent,
        )
    except Problem as problem:
        return _observed(started, stream_type, problem_answer(problem, _instance(i)))
    outcome, published = await side.service.execute(pending)
    return _observed(started, stream_type, answer(outcome, published, item.expected_version, _instance(i)))


def _observed(started: float, stream_type: str, answered: Answer) -> Answer:
    command_seconds(stream_type, answered.label).observe(time.perf_counter() - started)
    return answered


def _instance(i: int) -> str:
    """Where a problem occurred: the batch's path and the item, as a JSON pointer into the body."""
    return f"{PATH}#/commands/{i}"


def _item(answered: Answer) -> dict[str, Any]:
    item: dict[str, Any] = {"status": answered.status}
    item["problem" if answered.is_problem else "result"] = answered.body
    if answered.label == "replayed":
        item["replayed"] = True
    return item
