"""Routes FastAPI documents from their endpoint but that serve requests through a handler of their own.

FastAPI solves an endpoint's dependencies and parameters anew on every
request, a generic walk that costs more CPU than the rest of a hot route
(the command API's profile showed it beside the commit itself). A hot route
whose inputs are few and fixed (a path parameter, a header or two, the
bearer token) reads them in one pydantic validation instead, with the same
constraints and the same 422 errors, and calls the endpoint with them.
The endpoint keeps its annotated signature, so the OpenAPI document
describes the route exactly as before, and it is still what answers: the
route only replaces how its arguments are found.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

ArgumentReader = Callable[[Request], Awaitable[dict[str, Any]]]


def served_by(read: ArgumentReader) -> type[APIRoute]:
    """A route class that calls its endpoint with what `read` finds in the request.

    Pass it as `route_class_override`. `read` authenticates and validates
    (raising a Problem or a RequestValidationError, which the app's
    handlers answer as usual) and returns the endpoint's keyword arguments.
    """

    class DirectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            endpoint = self.endpoint

            async def handle(request: Request) -> Response:
                response: Response = await endpoint(**await read(request))
                return response

            return handle

    return DirectRoute


class RequestParams(BaseModel):
    """Path parameters and headers of one route, validated together.

    A subclass declares each as a field with its constraints; `LOCATIONS`
    says where each comes from, as FastAPI names it in a 422 (`path`,
    `query`, or `header` with its hyphenated name).
    """

    LOCATIONS: ClassVar[dict[str, tuple[str, str]]] = {}

    @classmethod
    def read(cls, request: Request) -> Any:
        given: dict[str, str] = {}
        for field, (source, name) in cls.LOCATIONS.items():
            if source == "path":
                value = request.path_params.get(name)
            elif source == "query":
                value = request.query_params.get(name)
            else:
                value = request.headers.get(name)
            if value is not None:
                given[field] = value
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": cls.LOCATIONS.get(str(e["loc"][0]), e["loc"])} for e in exc.errors()]
            ) from None
