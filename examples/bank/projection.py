"""The `accounts` projection: one row per account plus its ledger. Pure handlers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventfold.projection import Change, Doc, Projection
from examples.bank.contracts import ACCOUNT, AccountClosed, AccountOpened, Deposited, Withdrawn
from examples.bank.tables import account_transactions, accounts
from schemas.base import Event
from schemas.envelope import EnvelopeMeta

_ZERO = timedelta(0)


def _utc(ts: datetime) -> datetime:
    # SQLite keeps wall-clock time only, so every timestamp is stored in UTC.
    # Most already are; converting those anyway costs more than the handler.
    offset = ts.utcoffset()
    if offset == _ZERO:
        return ts
    return ts.astimezone(UTC) if offset is not None else ts.replace(tzinfo=UTC)


def _entry(doc: Doc, env: EnvelopeMeta, kind: str, amount: int, reference: str) -> Change:
    at = _utc(env.occurred_at)
    new = {**doc, "balance": doc["balance"] + amount, "updated_at": at}
    row = {
        "account_id": env.stream_id,
        "version": env.version,
        "type": kind,
        "amount": abs(amount),
        "balance_after": new["balance"],
        "occurred_at": at,
        "reference": reference,
    }
    return Change(new, [(account_transactions, row)])


def opened(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, AccountOpened)
    at = _utc(env.occurred_at)
    return Change({"owner": event.owner, "balance": 0, "status": "open", "opened_at": at, "updated_at": at})


def deposited(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Deposited) and doc is not None
    return _entry(doc, env, "deposit", event.amount, event.reference)


def withdrawn(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Withdrawn) and doc is not None
    return _entry(doc, env, "withdrawal", -event.amount, event.reference)


def closed(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, AccountClosed) and doc is not None
    return Change({**doc, "status": "closed", "updated_at": _utc(env.occurred_at)})


ACCOUNTS = Projection(
    name="accounts",
    contract=ACCOUNT,
    doc_table=accounts,
    child_tables=(account_transactions,),
    handlers={
        "AccountOpened": opened,
        "Deposited": deposited,
        "Withdrawn": withdrawn,
        "AccountClosed": closed,
    },
    filters=["owner", "status"],
)
