"""HTTP routes of the query API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from eventfold import jsonutil
from eventfold.auth import Admin, require
from eventfold.problems import PROBLEM_RESPONSES, Problem
from query_api import cursor, views
from query_api.deps import AccountsCaughtUp, SideDep
from query_api.status import projection_report

router = APIRouter()
# Authentication comes before waiting: a caller without the scope is refused at once.
CanRead = Depends(require("read"))

STREAM_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=1024, description="`next_cursor` of the last page.")]
_WAIT: dict[int | str, dict[str, Any]] = {
    k: v for k, v in PROBLEM_RESPONSES.items() if k in (400, 404, 422, 504)
}


class AccountView(BaseModel):
    id: str
    owner: str
    balance: int
    status: str
    version: int
    opened_at: str
    updated_at: str


class AccountPage(BaseModel):
    items: list[AccountView]
    next_cursor: str | None


class TransactionView(BaseModel):
    account_id: str
    version: int
    type: str
    amount: int
    balance_after: int
    occurred_at: str
    reference: str


class TransactionPage(BaseModel):
    items: list[TransactionView]
    next_cursor: str | None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _after(kind: str, token: str | None, types: tuple[type, ...]) -> list[Any] | None:
    if token is None:
        return None
    try:
        return cursor.decode(kind, token, types)
    except cursor.InvalidCursor as exc:
        raise Problem(400, "invalid_cursor", str(exc)) from None


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/accounts/{account_id}",
    response_model=AccountView,
    dependencies=[CanRead, AccountsCaughtUp],
    responses={304: {"description": "Not modified"}, **_WAIT},
)
async def read_account(
    side: SideDep,
    account_id: Annotated[str, Path(pattern=STREAM_ID)],
    if_none_match: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Read one account; its ETag is its version."""
    account = await views.get_account(side.reads, account_id)
    if account is None:
        raise Problem(404, "account_not_found", f"there is no account {account_id!r}")
    etag = f'"{account["version"]}"'
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return _json(account, headers={"ETag": etag})


@router.get(
    "/accounts", response_model=AccountPage, dependencies=[CanRead, AccountsCaughtUp], responses=_WAIT
)
async def read_accounts(
    side: SideDep,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[Literal["open", "closed"] | None, Query()] = None,
    limit: Limit = 50,
    cursor_: Annotated[str | None, Query(alias="cursor", max_length=1024)] = None,
) -> Response:
    """List accounts in id order, optionally by owner or status, a page at a time."""
    after = _after("accounts", cursor_, (str,))
    items, more = await views.list_accounts(
        side.reads, owner=owner, status=status, after=after[0] if after else None, limit=limit
    )
    nxt = cursor.encode("accounts", [items[-1]["id"]]) if more and items else None
    return _json({"items": items, "next_cursor": nxt})


@router.get(
    "/accounts/{account_id}/transactions",
    response_model=TransactionPage,
    dependencies=[CanRead, AccountsCaughtUp],
    responses=_WAIT,
)
async def read_transactions(
    side: SideDep,
    account_id: Annotated[str, Path(pattern=STREAM_ID)],
    limit: Limit = 50,
    cursor_: Annotated[str | None, Query(alias="cursor", max_length=1024)] = None,
) -> Response:
    """List one account's ledger in version order, a page at a time."""
    after = _after(f"tx:{account_id}", cursor_, (int,))
    if await views.get_account(side.reads, account_id) is None:
        raise Problem(404, "account_not_found", f"there is no account {account_id!r}")
    items, more = await views.list_transactions(
        side.reads, account_id, after=after[0] if after else None, limit=limit
    )
    nxt = cursor.encode(f"tx:{account_id}", [items[-1]["version"]]) if more and items else None
    return _json({"items": items, "next_cursor": nxt})


@router.get("/projections", dependencies=[CanRead])
async def read_projections(side: SideDep) -> Response:
    """Each projection's state, offsets, lag, events applied and dead letters."""
    report = await projection_report(side.engine, side.projections, side.settings.kafka, side.watermarks)
    return _json({"projections": report})


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
    return _json({"projection": name, "generation": generation}, 202)


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
    return _json({"status": "ready", "checks": {"database": "ok"}})
