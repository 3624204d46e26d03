"""The bank's own read routes: accounts and their ledgers, shaped by hand.

The generic `/views/...` routes serve every projection; these show how an app
adds routes of its own (`App.routers`) with the query API's helpers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import bindparam, select

from eventfold.problems import Problem
from examples.bank.tables import account_transactions, accounts
from query_api import cursor
from query_api.prepared import PreparedRead
from query_api.routing import (
    STREAM_ID,
    WAIT_RESPONSES,
    CanRead,
    Cursor,
    Limit,
    SideDep,
    after,
    caught_up,
    etag_matches,
    json_response,
)
from query_api.views import Reads, iso

router = APIRouter(tags=["bank"])
AccountsCaughtUp = caught_up("accounts")


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


def _account(row: Any) -> dict[str, Any]:
    # Rows are positional, in the table's column order (`Reads.rows`).
    id_, owner, balance, status, version, opened_at, updated_at = row
    return {
        "id": id_,
        "owner": owner,
        "balance": int(balance),
        "status": status,
        "version": int(version),
        "opened_at": iso(opened_at),
        "updated_at": iso(updated_at),
    }


# Built once; each read sends only the id. On PostgreSQL it runs on asyncpg directly.
_ACCOUNT_BY_ID = PreparedRead.of(select(accounts).where(accounts.c.id == bindparam("account_id")))


async def get_account(reads: Reads, account_id: str) -> dict[str, Any] | None:
    rows = await reads.rows(_ACCOUNT_BY_ID, {"account_id": account_id})
    return _account(rows[0]) if rows else None


async def list_accounts(
    reads: Reads, *, owner: str | None, status: str | None, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A page in id order, and whether more rows follow."""
    stmt = select(accounts).order_by(accounts.c.id).limit(limit + 1)
    if owner is not None:
        stmt = stmt.where(accounts.c.owner == owner)
    if status is not None:
        stmt = stmt.where(accounts.c.status == status)
    if after is not None:
        stmt = stmt.where(accounts.c.id > after)
    rows = await reads.rows(stmt)
    return [_account(r) for r in rows[:limit]], len(rows) > limit


async def list_transactions(
    reads: Reads, account_id: str, *, after: int | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    t = account_transactions
    stmt = select(t).where(t.c.account_id == account_id).order_by(t.c.version).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(t.c.version > after)
    rows = await reads.rows(stmt)
    items = [
        {
            "account_id": r.account_id,
            "version": int(r.version),
            "type": r.type,
            "amount": int(r.amount),
            "balance_after": int(r.balance_after),
            "occurred_at": iso(r.occurred_at),
            "reference": r.reference,
        }
        for r in rows[:limit]
    ]
    return items, len(rows) > limit


@router.get(
    "/accounts/{account_id}",
    response_model=AccountView,
    dependencies=[CanRead, AccountsCaughtUp],
    responses={304: {"description": "Not modified"}, **WAIT_RESPONSES},
)
async def read_account(
    side: SideDep,
    account_id: Annotated[str, Path(pattern=STREAM_ID)],
    if_none_match: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Read one account; its ETag is its version."""
    account = await get_account(side.reads, account_id)
    if account is None:
        raise Problem(404, "account_not_found", f"there is no account {account_id!r}")
    etag = f'"{account["version"]}"'
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return json_response(account, headers={"ETag": etag})


@router.get(
    "/accounts",
    response_model=AccountPage,
    dependencies=[CanRead, AccountsCaughtUp],
    responses=WAIT_RESPONSES,
)
async def read_accounts(
    side: SideDep,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[Literal["open", "closed"] | None, Query()] = None,
    limit: Limit = 50,
    cursor_: Cursor = None,
) -> Response:
    """List accounts in id order, optionally by owner or status, a page at a time."""
    start = after("accounts", cursor_, (str,))
    items, more = await list_accounts(
        side.reads, owner=owner, status=status, after=start[0] if start else None, limit=limit
    )
    nxt = cursor.encode("accounts", [items[-1]["id"]]) if more and items else None
    return json_response({"items": items, "next_cursor": nxt})


@router.get(
    "/accounts/{account_id}/transactions",
    response_model=TransactionPage,
    dependencies=[CanRead, AccountsCaughtUp],
    responses=WAIT_RESPONSES,
)
async def read_transactions(
    side: SideDep,
    account_id: Annotated[str, Path(pattern=STREAM_ID)],
    limit: Limit = 50,
    cursor_: Cursor = None,
) -> Response:
    """List one account's ledger in version order, a page at a time."""
    start = after(f"tx:{account_id}", cursor_, (int,))
    if await get_account(side.reads, account_id) is None:
        raise Problem(404, "account_not_found", f"there is no account {account_id!r}")
    items, more = await list_transactions(
        side.reads, account_id, after=start[0] if start else None, limit=limit
    )
    nxt = cursor.encode(f"tx:{account_id}", [items[-1]["version"]]) if more and items else None
    return json_response({"items": items, "next_cursor": nxt})
