"""A typed client for the bank's own routes, on the generic `EventfoldClient`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from eventfold.client import EventfoldClient, _ok, _wait


class Account(BaseModel):
    id: str
    owner: str
    balance: int
    status: str
    version: int
    opened_at: datetime
    updated_at: datetime


class Transaction(BaseModel):
    account_id: str
    version: int
    type: str
    amount: int
    balance_after: int
    occurred_at: datetime


class AccountPage(BaseModel):
    items: list[Account]
    next_cursor: str | None


class TransactionPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None


class BankClient(EventfoldClient):
    """`EventfoldClient` plus the bank's account routes, answers typed."""

    async def account(
        self, account_id: str, *, wait_for: str | None = None, wait_timeout: float | None = None
    ) -> Account:
        params = _wait(wait_for, wait_timeout)
        return Account.model_validate(_ok(await self._queries.get(f"/accounts/{account_id}", params=params)))

    async def accounts(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        wait_for: str | None = None,
    ) -> AccountPage:
        params = {
            k: v
            for k, v in {"owner": owner, "status": status, "limit": limit, "cursor": cursor}.items()
            if v is not None
        }
        params.update(_wait(wait_for, None))
        return AccountPage.model_validate(_ok(await self._queries.get("/accounts", params=params)))

    async def transactions(
        self,
        account_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        wait_for: str | None = None,
    ) -> TransactionPage:
        params: dict[str, Any] = {
            k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None
        }
        params.update(_wait(wait_for, None))
        r = await self._queries.get(f"/accounts/{account_id}/transactions", params=params)
        return TransactionPage.model_validate(_ok(r))
