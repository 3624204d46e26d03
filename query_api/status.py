"""The state of every projection, reactor and process manager: what `GET /projections` and
`eventfold status` show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.process import ProcessManager
from eventfold.projection import Projection
from eventfold.reaction import Reactor
from eventfold.settings import KafkaSettings
from query_api import views
from query_api.watermarks import WatermarkCache


async def projection_report(
    engine: AsyncEngine, projections: Sequence[Projection], kafka: KafkaSettings, watermarks: WatermarkCache
) -> list[dict[str, Any]]:
    """Stored state and offsets from the read store, high-watermarks from Kafka."""
    rows = await views.projection_rows(engine, [p.name for p in projections])
    topics = sorted({p.topic(kafka) for p in projections})
    stored_all = {k: v for r in rows.values() for k, v in r["offsets"].items()}
    marks = await watermarks.get(topics, stored_all)
    out = []
    for p in projections:
        row = rows[p.name]
        topic = p.topic(kafka)
        partitions = _partitions(topic, row["offsets"], marks)
        lags = [x["lag"] for x in partitions]
        failures = row["failures"]
        out.append(
            {
                "name": p.name,
                "state": row["state"],
                "detail": row["detail"],
                "topic": topic,
                "partitions": partitions,
                "lag": None if any(x is None for x in lags) else sum(lags),
                "events_applied": row["events_applied"],
                "dead_letters": sum(n for r, n in failures.items() if r != "version_gap"),
                "version_gaps": failures.get("version_gap", 0),
                "failures_by_reason": failures,
                "last_event_at": row["last_event_at"],
                "generation": row["generation"],
                "rebuild_progress": row["rebuild_progress"],
                "rebuild_detail": row["rebuild_detail"],
            }
        )
    return out


async def reactor_report(
    engine: AsyncEngine, reactors: Sequence[Reactor], kafka: KafkaSettings, watermarks: WatermarkCache
) -> list[dict[str, Any]]:
    """A reactor's progress in the shape of a projection's: offsets and lag over all its topics.

    `events_applied` counts events its handlers finished; `dead_letters` the
    events dead-lettered, `held_back` the later events of their streams.
    """
    if not reactors:
        return []
    rows = await views.projection_rows(engine, [r.name for r in reactors])
    topics = sorted({t for r in reactors for t in r.topics(kafka)})
    stored_all = {k: v for row in rows.values() for k, v in row["offsets"].items()}
    marks = await watermarks.get(topics, stored_all)
    out = []
    for r in reactors:
        row = rows[r.name]
        partitions = [x for topic in r.topics(kafka) for x in _partitions(topic, row["offsets"], marks)]
        lags = [x["lag"] for x in partitions]
        failures = row["failures"]
        out.append(
            {
                "name": r.name,
                "kind": "reactor",
                "state": row["state"],
                "detail": row["detail"],
                "topics": r.topics(kafka),
                "partitions": partitions,
                "lag": None if any(x is None for x in lags) else sum(lags),
                "events_applied": row["events_applied"],
                "dead_letters": sum(n for reason, n in failures.items() if reason != "held_back"),
                "held_back": failures.get("held_back", 0),
                "version_gaps": 0,
                "failures_by_reason": failures,
                "last_event_at": row["last_event_at"],
                "generation": 1,
                "rebuild_progress": None,
                "rebuild_detail": None,
            }
        )
    return out


async def process_manager_report(
    engine: AsyncEngine,
    managers: Sequence[ProcessManager[Any]],
    kafka: KafkaSettings,
    watermarks: WatermarkCache,
) -> list[dict[str, Any]]:
    """A process manager's progress in the shape of a projection's, with its instances by status.

    `stuck` counts the instances a refusal stopped (listed with their reason
    by GET /process-managers/{name}/instances?status=stuck).
    """
    if not managers:
        return []
    from projector.process_store import instance_counts

    rows = await views.projection_rows(engine, [m.offsets_key for m in managers])
    topics = sorted({t for m in managers for t in m.topics(kafka)})
    stored_all = {k: v for row in rows.values() for k, v in row["offsets"].items()}
    marks = await watermarks.get(topics, stored_all)
    async with engine.connect() as conn:
        counts = await instance_counts(conn, [m.name for m in managers])
    out = []
    for m in managers:
        row = rows[m.offsets_key]
        partitions = [x for topic in m.topics(kafka) for x in _partitions(topic, row["offsets"], marks)]
        lags = [x["lag"] for x in partitions]
        instances = counts[m.name]
        out.append(
            {
                "name": m.name,
                "kind": "process_manager",
                "state": "stuck" if instances["stuck"] else ("live" if row["offsets"] else "unknown"),
                "detail": None,
                "topics": m.topics(kafka),
                "partitions": partitions,
                "lag": None if any(x is None for x in lags) else sum(lags),
                "instances": instances,
                "events_applied": None,
                "dead_letters": instances["stuck"],
                "version_gaps": 0,
                "last_event_at": None,
                "generation": 1,
                "rebuild_progress": None,
                "rebuild_detail": None,
            }
        )
    return out


def _partitions(
    topic: str, offsets: dict[tuple[str, int], int], marks: dict[tuple[str, int], int] | None
) -> list[dict[str, Any]]:
    """Each partition of `topic` with its stored offset, high-watermark and lag (None when unknown)."""
    parts = sorted(
        {part for t, part in offsets if t == topic} | {part for t, part in (marks or {}) if t == topic}
    )
    out = []
    for part in parts:
        stored = offsets.get((topic, part), 0)
        hw = marks.get((topic, part)) if marks is not None else None
        out.append(
            {
                "topic": topic,
                "partition": part,
                "offset": stored,
                "high_watermark": hw,
                "lag": None if hw is None else max(hw - stored, 0),
            }
        )
    return out
