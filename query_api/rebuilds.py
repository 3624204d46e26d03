"""Blue/green rebuilds started over HTTP: one background task per projection."""

from __future__ import annotations

import asyncio

import structlog

from eventfold.db import create_engine
from eventfold.problems import Problem
from eventfold.projection import Projection
from projector.rebuild import rebuild_projection, stored_generation
from query_api.bootstrap import QuerySide

log = structlog.get_logger("eventfold.query")


async def start_rebuild(side: QuerySide, name: str) -> int:
    """Start rebuilding `name` in the background; returns the generation it builds."""
    projection = next((p for p in side.projections if p.name == name), None)
    if projection is None:
        raise Problem(404, "projection_not_found", f"there is no projection {name!r}")
    running = side.rebuilds.get(name)
    if running is not None and not running.done():
        raise Problem(409, "rebuild_running", f"a rebuild of {name!r} is already running")
    generation = await stored_generation(side.engine, name) + 1
    side.rebuilds[name] = asyncio.create_task(_run(side, projection), name=f"rebuild-{name}")
    return generation


async def _run(side: QuerySide, projection: Projection) -> None:
    # The query side's engine is a reading one; the rebuild writes, so it gets its own.
    engine = create_engine(side.settings.db.read_db_url, pool_size=2)
    try:
        await rebuild_projection(side.settings, projection, engine)
    except asyncio.CancelledError:
        log.warning("rebuild_cancelled", projection=projection.name)
        raise
    except Exception:
        log.exception("rebuild_failed", projection=projection.name)
    finally:
        await engine.dispose()
