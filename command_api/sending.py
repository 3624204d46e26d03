"""From a request's parts to a queued command, and from its outcome to an answer.

Both ways in share this: `POST /commands/<stream_type>/{stream_id}` (one
command, parts in the path, headers and body) and `POST /commands` (many, each
with its parts in one JSON item). A command is checked the same way and its
outcome answered the same way, so a command sent either way, repeated with
the same idempotency key, is recognised as the same command.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from command_api.bootstrap import CommandSide
from command_api.outcomes import (
    Accepted,
    Outcome,
    PendingCommand,
    Refused,
    Replayed,
    Unavailable,
    VersionConflict,
)
from eventfold import jsonutil
from eventfold.problems import PROBLEM_JSON, Problem, problem_body
from schemas.base import UNSTORABLE, unstorable
from schemas.registry import UnknownCommandType, UnknownStreamType

STREAM_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
_ETAG = re.compile(r'^(?:W/)?"?(\d{1,12})"?$')


class CommandBody(BaseModel):
    """What a client sends: a command type and its data."""

    type: str
    data: dict[str, Any] = {}


def expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    m = _ETAG.match(if_match.strip())
    if not m:
        raise Problem(400, "invalid_if_match", 'If-Match must be a version such as "3"')
    return int(m.group(1))


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a problem: 400 for text that is not JSON, 422 for strings no store can keep."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _refuse_unstorable(raw)
        raise Problem(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def parse_body(raw: bytes) -> tuple[str, dict[str, Any]]:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise Problem(422, "invalid_command", 'the body must be an object {"type": ..., "data": {...}}')
    try:
        parsed = CommandBody.model_validate(body)
    except ValidationError as exc:
        raise Problem(422, "invalid_command", errors_text(exc), errors=errors(exc)) from None
    return parsed.type, parsed.data


def _refuse_unstorable(raw: bytes) -> None:
    """A 422 for JSON that only orjson refuses: `\\ud800` is JSON text but no UTF-8 string.

    The standard parser reads unpaired surrogate escapes; anything it finds
    wrong besides (or NaN, which orjson rejects too) stays a malformed body.
    """
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return
    found = unstorable(body)
    if found is not None:
        raise _unstorable(*found)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _unstorable(path: tuple[str | int, ...], why: str) -> Problem:
    where = ".".join(map(str, path)) or "body"
    return Problem(422, UNSTORABLE, f"{where}: {why}", errors=[{"loc": [str(p) for p in path], "msg": why}])


def _refused_data(exc: ValidationError) -> Problem:
    """The problem for command data its model refused; unstorable strings have a code of their own."""
    for e in exc.errors():
        if e["type"] == UNSTORABLE:
            ctx = e.get("ctx") or {}
            return _unstorable(("data", *ctx.get("path", ())), str(ctx.get("why", e["msg"])))
    return Problem(422, "invalid_command_data", errors_text(exc), errors=errors(exc))


def errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]


def errors_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())[:1000]


def pending_command(
    side: CommandSide,
    stream_type: str,
    stream_id: str,
    command_type: str,
    data: dict[str, Any],
    *,
    expected: int | None,
    idempotency_key: str | None,
    correlation_id: str | None,
    traceparent: str | None,
) -> PendingCommand:
    """The command checked against its stream type's contract, ready to queue; a Problem if it is not one."""
    try:
        aggregate = side.aggregates.get(stream_type)
    except UnknownStreamType:
        raise Problem(404, "unknown_stream_type", f"there is no stream type {stream_type!r}") from None
    try:
        model = aggregate.contract.command_model(command_type)
    except UnknownCommandType:
        raise Problem(
            422,
            "unknown_command_type",
            f"{stream_type} has no command {command_type!r}",
            known=sorted(aggregate.contract.commands),
        ) from None
    try:
        command = model.model_validate(data)
    except ValidationError as exc:
        raise _refused_data(exc) from None
    return PendingCommand(
        stream_type=stream_type,
        stream_id=stream_id,
        command=command,
        expected_version=expected,
        idempotency_key=idempotency_key,
        # What a repeat of the key must match; without a key nothing is compared.
        request_hash=(
            jsonutil.canonical_hash([stream_type, stream_id, command_type, data, expected])
            if idempotency_key is not None
            else ""
        ),
        correlation_id=correlation_id or jsonutil.new_id(),
        command_id=jsonutil.new_id(),
        future=asyncio.get_running_loop().create_future(),
        traceparent=traceparent,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What a command's outcome answers: status, body (a result or a problem), headers, metric label."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    label: str

    @property
    def is_problem(self) -> bool:
        return self.status >= 400

    def response(self) -> Response:
        media = PROBLEM_JSON if self.is_problem else "application/json"
        return Response(
            jsonutil.dumps(self.body), status_code=self.status, media_type=media, headers=self.headers
        )


def problem_answer(problem: Problem, instance: str) -> Answer:
    body = problem_body(problem.status, problem.code, problem.detail, instance=instance, **problem.extra)
    return Answer(problem.status, body, problem.headers, "invalid")


def answer(outcome: Outcome, published: bool, expected: int | None, instance: str) -> Answer:
    match outcome:
        case Accepted():
            headers = {"ETag": f'"{outcome.version}"'}
            if not published:
                # Durable, not yet in Kafka: the position (for wait_for) comes once
                # it is published; a repeat with the same Idempotency-Key tells.
                headers["Retry-After"] = "1"
            label = "accepted" if published else "accepted_unpublished"
            return Answer(200 if published else 202, outcome.body(published=published), headers, label)
        case Replayed(status=status, body=body):
            headers = {"ETag": f'"{body.get("version")}"', "Idempotent-Replayed": "true"}
            return Answer(status, body, headers, "replayed")
        case VersionConflict(current_version=current):
            detail = f"expected version {expected}, the stream is at {current}"
            conflict = problem_body(
                409, "version_conflict", detail, instance=instance, current_version=current
            )
            return Answer(409, conflict, {"ETag": f'"{current}"'}, "conflict")
        case Refused(code=code, detail=detail, status=status):
            return Answer(status, problem_body(status, code, detail, instance=instance), {}, "refused")
        case Unavailable(detail=detail):
            body = problem_body(503, "unavailable", f"{detail}; nothing was appended", instance=instance)
            return Answer(503, body, {"Retry-After": "1"}, "unavailable")
    raise AssertionError(f"unhandled outcome {outcome!r}")
