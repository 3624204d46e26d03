"""Re-drive a reactor's dead letters and held-back events, stream by stream, in order.

`projection_failures` rows keyed by a reactor's name hold the records it
dead-lettered (its handler kept failing) and the later events of their
streams that were held back. Once the cause is fixed, `retry` runs the
handler again on them, one attempt each, in topic, partition, offset order
(a stream lives on one partition, so this is the stream's order):

- an event handled (or no longer handled by the reactor) loses its row;
- an event that fails again keeps its row with the new detail, and the
  rest of its stream stays held back, so nothing runs out of order;
- events the live runtime held back while the retry ran are taken too
  (when retrying everything), so the stream is caught up and unblocked.

Offsets are not touched: these records lie behind the stored offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.reaction import Reactor
from eventfold.settings import KafkaSettings
from projector import store
from projector.batch import decode_as
from projector.reactors import contracts_by_topic, react
from projector.redrive import RetryResult, StoredRecord, _headers
from projector.tables import projection_failures

_F = projection_failures.c


async def _no_sleep(_: float) -> None:
    return None


async def retry_reactor(
    engine: AsyncEngine, reactor: Reactor, kafka: KafkaSettings, ids: Sequence[int] | None = None
) -> RetryResult:
    """Run the reactor again on its recorded failures (all of them when `ids` is None)."""
    contracts = contracts_by_topic(reactor, kafka)
    retried = handled = passed = still = 0
    done_streams: set[tuple[str, bytes | None]] = set()
    while True:
        rows = await _rows(engine, reactor.name, ids)
        # Without ids, streams left failing are not tried again in this run.
        rows = [r for r in rows if (r["topic"], r["key"]) not in done_streams]
        if not rows:
            break
        stuck: set[tuple[str, bytes | None]] = set()
        for r in rows:
            stream = (r["topic"], r["key"])
            if stream in stuck:
                continue  # a failed re-drive keeps the rest of its stream held back
            retried += 1
            record = StoredRecord(
                r["topic"], r["partition"], r["offset"], r["key"], r["value"], _headers(r["headers"])
            )
            contract = contracts.get(r["topic"])
            if contract is None:
                stuck.add(stream)
                still += 1
                continue
            outcome = await react(reactor, decode_as(contract, record), attempts=1, sleep=_no_sleep)
            async with engine.begin() as conn:
                if outcome.failure is None:
                    await conn.execute(delete(projection_failures).where(_F.id == r["id"]))
                else:
                    f = outcome.failure
                    await conn.execute(
                        update(projection_failures)
                        .where(_F.id == r["id"])
                        .values(reason=f.reason, detail=store.storable(f.detail))
                    )
            if outcome.failure is not None:
                stuck.add(stream)
                still += 1
            elif outcome.handled:
                handled += 1
            else:
                passed += 1
        done_streams |= {(r["topic"], r["key"]) for r in rows}
        if ids is not None:
            break
    return RetryResult(retried, handled, passed, still)


async def _rows(engine: AsyncEngine, reactor: str, ids: Sequence[int] | None) -> list[dict[str, Any]]:
    stmt = select(projection_failures).where(_F.projection == reactor, _F.value.is_not(None))
    if ids is not None:
        stmt = stmt.where(_F.id.in_(list(ids)))
    async with engine.connect() as conn:
        result = await conn.execute(stmt.order_by(_F.topic, _F.partition, _F.offset))
        return [dict(r) for r in result.mappings()]
