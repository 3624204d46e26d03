"""What a read route needs, for the generic views and for an app's own routes.

An app may mount routers of its own beside the generic `/views` (`App.routers`);
they use these helpers so that their answers look like the rest of the API:
JSON bodies, opaque cursors, ETags, problem+json, read-your-writes waits.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.responses import Response

from eventfold import jsonutil
from eventfold.auth import require
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api import cursor
from query_api.deps import SideDep, caught_up

__all__ = [
    "STREAM_ID",
    "WAIT_RESPONSES",
    "CanRead",
    "Cursor",
    "Limit",
    "SideDep",
    "after",
    "caught_up",
    "etag_matches",
    "json_response",
]

# Authentication comes before waiting: a caller without the scope is refused at once.
CanRead = Depends(require("read"))

STREAM_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None, Query(alias="cursor", max_length=1024, description="`next_cursor` of the last page.")
]
WAIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    k: v for k, v in PROBLEM_RESPONSES.items() if k in (400, 404, 422, 503, 504)
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps(body), status_code=status, media_type="application/json", headers=headers)


def after(kind: str, token: str | None, types: tuple[type, ...]) -> list[Any] | None:
    """The keyset a cursor of `kind` points after, or None for the first page."""
    if token is None:
        return None
    try:
        return cursor.decode(kind, token, types)
    except cursor.InvalidCursor as exc:
        raise Problem(400, "invalid_cursor", str(exc)) from None


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
