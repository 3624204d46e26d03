"""RFC 9457 problem details for every error either API returns."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventfold import jsonutil, openapi

PROBLEM_JSON = "application/problem+json"
_PROBLEM_TYPE_PREFIX = "https://eventfold.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """Raise from a route to answer with problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_body(
    status: int, code: str, detail: str, *, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem+json document itself, for an answer or for one item of a batch's answer."""
    body: dict[str, Any] = {
        "type": f"{_PROBLEM_TYPE_PREFIX}{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, code, detail, instance=instance, **extra)
    return Response(jsonutil.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error through problem+json, including FastAPI's own; document the Problem schema."""
    openapi.extend(app, lambda doc: openapi.add_schemas(doc, PROBLEM_SCHEMAS))

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status, exc.code, exc.detail, instance=request.url.path, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        return problem_response(
            422,
            "invalid_request",
            "the request parameters are invalid",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code,
            code,
            str(exc.detail),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return problem_response(
            500,
            "internal_error",
            "an unexpected error occurred; it has been logged",
            instance=request.url.path,
        )


# The members every problem has, and the extension members some carry; others may follow.
PROBLEM_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "title": "Problem",
        "description": "RFC 9457 problem details. `code` is stable and machine-readable; "
        "`type` is the same code as a URI.",
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {
                "type": "string",
                "format": "uri",
                "examples": [f"{_PROBLEM_TYPE_PREFIX}version_conflict"],
            },
            "title": {"type": "string", "description": "The HTTP status, in words."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": "string", "examples": ["version_conflict"]},
            "detail": {"type": "string", "description": "What went wrong with this request."},
            "instance": {"type": "string", "description": "The request path, as the server read it."},
            "errors": {
                "type": "array",
                "description": "Each invalid part of the request (422).",
                "items": {"$ref": "#/components/schemas/ProblemError"},
            },
            "known": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The command types the stream type has (`unknown_command_type`).",
            },
            "current_version": {
                "type": "integer",
                "description": "The stream's version (`version_conflict`); also its ETag.",
            },
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "The state of each dependency (`not_ready`).",
            },
        },
        "additionalProperties": True,
    },
    "ProblemError": {
        "title": "ProblemError",
        "type": "object",
        "required": ["loc", "msg"],
        "properties": {
            "loc": {"type": "array", "items": {"type": "string"}, "description": "Where, from the top."},
            "msg": {"type": "string"},
        },
    },
}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": title,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for status, title in _TITLES.items()
}
