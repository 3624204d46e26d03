"""Read-store I/O of process managers: one `process_instances` row per instance.

An instance row holds the state, the commands still to send (each with the
idempotency key it is sent under, fixed when the step that caused it was
stored), the deadline and the status. `apply_step` is pure: the runtime
applies a step to an `Instance` in memory and writes it back in the
transaction that also stores the offsets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from eventfold import jsonutil
from eventfold.aggregate import Aggregates
from eventfold.process import Dispatch, ProcessManager, Step
from projector.store import upsert
from projector.tables import process_instances

ACTIVE, DONE, STUCK = "active", "done", "stuck"


@dataclass(frozen=True, slots=True)
class Pending:
    """A command still to send, under the key it will always be sent with."""

    key: str
    issue: Dispatch


@dataclass(frozen=True)
class Instance:
    id: str
    state: BaseModel
    pending: tuple[Pending, ...] = ()
    deadline: float | None = None
    status: str = ACTIVE
    reason: str | None = None
    stored: bool = field(default=False, compare=False)


def apply_step(instance: Instance, step: Step[Any], key_prefix: str) -> Instance:
    """The instance after `step`; its commands are keyed `<key_prefix>:<n>`."""
    new = tuple(Pending(f"{key_prefix}:{n}", issue) for n, issue in enumerate(step.commands))
    return replace(
        instance,
        state=step.state,
        pending=instance.pending + new,
        deadline=step.deadline.timestamp() if step.deadline is not None else None,
        status=DONE if step.done else ACTIVE,
    )


def _dump_pending(pending: Sequence[Pending]) -> str:
    return jsonutil.dumps(
        [
            {
                "key": p.key,
                "stream_type": p.issue.stream_type,
                "stream_id": p.issue.stream_id,
                "type": type(p.issue.command).__name__,
                "data": p.issue.command.model_dump(mode="json"),
            }
            for p in pending
        ]
    ).decode()


def _load_pending(raw: str, aggregates: Aggregates) -> tuple[Pending, ...]:
    out = []
    for item in jsonutil.loads(raw):
        model = aggregates.get(item["stream_type"]).contract.command_model(item["type"])
        issue = Dispatch(item["stream_type"], item["stream_id"], model.model_validate(item["data"]))
        out.append(Pending(item["key"], issue))
    return tuple(out)


def _instance(pm: ProcessManager[Any], aggregates: Aggregates, row: Any) -> Instance:
    return Instance(
        id=row.instance,
        state=pm.load_state(jsonutil.loads(row.state)),
        pending=_load_pending(row.pending, aggregates),
        deadline=row.deadline,
        status=row.status,
        reason=row.reason,
        stored=True,
    )


async def load_instances(
    conn: AsyncConnection, pm: ProcessManager[Any], aggregates: Aggregates, ids: Iterable[str]
) -> dict[str, Instance]:
    """The stored instances among `ids`, held until commit on PostgreSQL."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    stmt = _LOAD_HELD if conn.dialect.name == "postgresql" else _LOAD
    rows = await conn.execute(stmt, {"p_process": pm.name, "p_ids": wanted})
    return {r.instance: _instance(pm, aggregates, r) for r in rows}


# Run for every batch and every command sent: built once, values bound at execution.
_LOAD = select(process_instances).where(
    process_instances.c.process == bindparam("p_process"),
    process_instances.c.instance.in_(bindparam("p_ids", expanding=True)),
)
_LOAD_HELD = _LOAD.order_by(process_instances.c.instance).with_for_update()


async def with_pending(conn: AsyncConnection, process: str) -> list[str]:
    """Instances that still have commands to send (not stuck)."""
    c = process_instances.c
    stmt = select(c.instance).where(c.process == process, c.status != STUCK, c.pending != "[]")
    return list((await conn.execute(stmt)).scalars())


async def due(conn: AsyncConnection, process: str, now: float) -> list[str]:
    """Active instances whose deadline has passed, in deadline order."""
    c = process_instances.c
    stmt = (
        select(c.instance)
        .where(and_(c.process == process, c.status == ACTIVE, c.deadline <= now))
        .order_by(c.deadline)
    )
    return list((await conn.execute(stmt)).scalars())


async def save_instances(conn: AsyncConnection, process: str, instances: Iterable[Instance]) -> None:
    rows = [
        {
            "process": process,
            "instance": i.id,
            "status": i.status,
            "state": jsonutil.dumps(i.state.model_dump(mode="json")).decode(),
            "pending": _dump_pending(i.pending),
            "deadline": i.deadline,
            "reason": i.reason,
            "updated_at": time.time(),
        }
        for i in instances
    ]
    if not rows:
        return
    keys = ("process", "instance")
    sets = [k for k in rows[0] if k not in keys]
    await conn.execute(upsert(conn, process_instances, keys, sets), rows)


async def instance_counts(conn: AsyncConnection, processes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Instances of each process manager by status (active, done, stuck)."""
    c = process_instances.c
    out: dict[str, dict[str, int]] = {p: {ACTIVE: 0, DONE: 0, STUCK: 0} for p in processes}
    stmt = (
        select(c.process, c.status, func.count())
        .where(c.process.in_(list(processes)))
        .group_by(c.process, c.status)
    )
    for process, status, n in await conn.execute(stmt):
        out[process][status] = int(n)
    return out


async def list_instances(
    conn: AsyncConnection, process: str, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """Instances as the query API lists them: status, reason, deadline, state, pending commands."""
    c = process_instances.c
    stmt = select(process_instances).where(c.process == process)
    if status is not None:
        stmt = stmt.where(c.status == status)
    rows = await conn.execute(stmt.order_by(c.instance).limit(limit))
    return [
        {
            "instance": r.instance,
            "status": r.status,
            "reason": r.reason,
            "deadline": r.deadline,
            "state": jsonutil.loads(r.state),
            "pending": jsonutil.loads(r.pending),
            "updated_at": r.updated_at,
        }
        for r in rows
    ]
