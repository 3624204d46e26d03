"""Wiring of the query API: the read engine, the offset watcher, the watermark cache.

Built in `lifespan` from the arguments of `create_app`, never at import, so
tests can pass their own settings and projections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.db import create_engine
from eventfold.process import ProcessManager
from eventfold.projection import Projection
from eventfold.reaction import Reactor
from eventfold.settings import Settings
from eventfold.tasks import cancel_and_wait
from query_api.documents import DocumentTable
from query_api.feed import ChangeFeed
from query_api.views import Reads
from query_api.waiting import OffsetWatcher
from query_api.watermarks import WatermarkCache


@dataclass
class QuerySide:
    settings: Settings
    projections: Sequence[Projection]
    engine: AsyncEngine
    reads: Reads  # the GET routes' own pool (query_api/views.py)
    watcher: OffsetWatcher
    watermarks: WatermarkCache
    # Rebuilds started by POST /projections/{name}/rebuild, by projection name;
    # cancelled when the app stops (an unfinished rebuild drops its tables).
    rebuilds: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    # Reactors and process managers whose progress GET /projections reports beside the projections.
    reactors: Sequence[Reactor] = ()
    process_managers: Sequence[ProcessManager[Any]] = ()
    # Live subscriptions' source (query_api/feed.py): tails the change feed while anyone subscribes.
    feed: ChangeFeed | None = None
    # Each projection's tables with their reads compiled once (query_api/documents.py), by name.
    documents: dict[str, DocumentTable] = field(default_factory=dict)


@asynccontextmanager
async def query_side(
    settings: Settings,
    projections: Sequence[Projection],
    reactors: Sequence[Reactor] = (),
    process_managers: Sequence[ProcessManager[Any]] = (),
) -> AsyncIterator[QuerySide]:
    """Open the read store for reading; close it when the app stops."""
    engine = create_engine(settings.db.read_db_url, pool_size=settings.db.db_pool_size, writer=False)
    reads = Reads(settings.db)
    side = QuerySide(
        settings,
        projections,
        engine,
        reads,
        OffsetWatcher(engine),
        WatermarkCache(settings.kafka),
        reactors=reactors,
        process_managers=process_managers,
        documents={p.name: DocumentTable.of(p) for p in projections},
    )
    q = settings.query_api
    side.feed = ChangeFeed(
        engine,
        reads,
        list(side.documents.values()),
        poll_s=q.live_poll_s,
        fallback_s=q.live_fallback_s,
    )
    side.feed.start()
    try:
        yield side
    finally:
        await side.feed.close()
        await cancel_and_wait(list(side.rebuilds.values()), timeout_s=30)
        await side.watcher.close()
        await reads.dispose()
        await engine.dispose()


def create_app(
    settings: Settings,
    projections: Sequence[Projection],
    routers: Sequence[APIRouter] = (),
    reactors: Sequence[Reactor] = (),
    process_managers: Sequence[ProcessManager[Any]] = (),
) -> FastAPI:
    """The query API of these projections, with an app's own routers beside the generic ones."""
    from eventfold import auth, problems
    from eventfold.limits import HeaderSizeLimit
    from eventfold.observability import CorrelationMiddleware, QueryTiming
    from query_api import console as console_pages
    from query_api.console.resources import console_side
    from query_api.live_routes import live_router
    from query_api.routes import router
    from query_api.view_routes import view_router

    cfg = settings
    chosen = list(projections)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            query_side(cfg, chosen, list(reactors), list(process_managers)) as side,
            console_side(cfg, chosen, list(reactors), list(process_managers)) as console,
        ):
            app.state.side = side
            app.state.console = console
            app.state.on_draining = [side.feed.drain] if side.feed is not None else []
            app.state.on_draining.append(console.drain)
            yield

    app = FastAPI(
        title="eventfold query API",
        version="0.1.0",
        description="Read models built from the event topics; `wait_for` reads your writes.",
        lifespan=lifespan,
    )
    problems.install(app)
    auth.install(app, cfg.auth, service="query API")
    app.include_router(router)
    # Live routes first: `/views/{name}/live` would otherwise be read as the document `live`.
    app.include_router(live_router([DocumentTable.of(p) for p in chosen]))
    # The generic views of every projection served, typed from its tables.
    app.include_router(view_router(chosen))
    for extra in routers:
        app.include_router(extra)
    # The console: its page at /console, `/` redirecting there, its JSON under /console/api.
    console_pages.install(app)
    app.add_middleware(QueryTiming)
    app.add_middleware(HeaderSizeLimit)
    app.add_middleware(CorrelationMiddleware)
    auth.install_cors(app, cfg.auth)
    return app
