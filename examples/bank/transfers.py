"""The `transfers` projection: one row per transfer and its steps. Pure handlers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from eventfold.projection import Change, Doc, Handler, Projection
from examples.bank.projection import _utc
from examples.bank.tables import transfer_steps, transfers
from examples.bank.transfer import (
    TRANSFER,
    TransferCompensated,
    TransferFailed,
    TransferRequested,
)
from schemas.base import Event
from schemas.envelope import EnvelopeMeta


def _step(env: EnvelopeMeta, step: str, detail: str = "") -> tuple[Table, dict[str, Any]]:
    row = {
        "transfer_id": env.stream_id,
        "version": env.version,
        "step": step,
        "occurred_at": _utc(env.occurred_at),
        "detail": detail,
    }
    return (transfer_steps, row)


def requested(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, TransferRequested)
    at = _utc(env.occurred_at)
    new = {
        "status": "requested",
        "source": event.source,
        "target": event.target,
        "amount": event.amount,
        "reason": "",
        "requested_at": at,
        "updated_at": at,
    }
    return Change(new, [_step(env, "requested")])


def _moved(status: str) -> Handler:
    def handler(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
        assert doc is not None
        reason = event.reason if isinstance(event, TransferFailed | TransferCompensated) else ""
        new = {
            **doc,
            "status": status,
            "reason": reason or doc["reason"],
            "updated_at": _utc(env.occurred_at),
        }
        return Change(new, [_step(env, status, reason)])

    return handler


TRANSFERS = Projection(
    name="transfers",
    contract=TRANSFER,
    doc_table=transfers,
    child_tables=(transfer_steps,),
    handlers={
        "TransferRequested": requested,
        "TransferDebited": _moved("debited"),
        "TransferCompleted": _moved("completed"),
        "TransferFailed": _moved("failed"),
        "TransferCompensated": _moved("compensated"),
    },
    filters=["status", "source", "target"],
)
