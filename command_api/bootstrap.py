"""Wiring of the command API: the one place that builds its parts.

Adapters come in as arguments so tests can pass their own aggregates, engine
or settings; nothing is built at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from command_api.publisher import BrokerWatch, Publisher
from command_api.service import CommandService
from command_api.store import WriteStore
from eventfold.aggregate import Aggregates
from eventfold.db import create_engine
from eventfold.kafka import new_producer
from eventfold.settings import Settings
from eventfold.tasks import cancel_and_wait


@dataclass
class CommandSide:
    settings: Settings
    aggregates: Aggregates
    engine: AsyncEngine
    store: WriteStore
    publisher: Publisher
    service: CommandService
    broker: BrokerWatch
    # The app's event schema history, for the older versions /asyncapi.json describes.
    schema_dir: Path | None = None


# How often the broker's state is probed for `eventfold_broker_up` between readiness checks.
_BROKER_WATCH_S = 5.0


async def _noop_ack(_: object) -> None:
    return None


@asynccontextmanager
async def command_side(
    settings: Settings, aggregates: Aggregates, schema_dir: Path | None = None
) -> AsyncIterator[CommandSide]:
    """Open the write store and the producer, run the service, close them all."""
    engine = create_engine(settings.db.write_db_url, pool_size=settings.db.db_pool_size, pre_ping=False)
    store = WriteStore(engine, aggregates, settings.kafka)
    publisher = Publisher(
        new_producer(settings.kafka),
        on_ack=_noop_ack,
        publish_timeout_s=settings.kafka.publish_timeout_s,
    )
    service = CommandService(store, publisher, settings.command_api, settings.kafka.publish_timeout_s)
    broker = BrokerWatch(publisher)
    await service.start()
    watch = asyncio.create_task(broker.run(_BROKER_WATCH_S), name="broker-watch")
    try:
        yield CommandSide(settings, aggregates, engine, store, publisher, service, broker, schema_dir)
    finally:
        await cancel_and_wait([watch])
        await service.stop()
        await engine.dispose()


def root_router(target: str) -> APIRouter:
    """`/` for a browser: the console of the query API when configured, else this API's docs."""
    from fastapi.responses import RedirectResponse

    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        """Send whoever opens the API's address to the console or the docs."""
        return RedirectResponse(target, status_code=307)

    return router


def create_app(settings: Settings, aggregates: Aggregates, schema_dir: Path | None = None) -> FastAPI:
    """The command API of these aggregates (an App's `write_side()`; its `schema_dir`)."""
    from command_api import batch
    from command_api.bodies import command_schemas
    from command_api.routes import command_router, router
    from eventfold import auth, openapi, problems
    from eventfold.limits import BodySizeLimit, HeaderSizeLimit
    from eventfold.observability import CorrelationMiddleware

    cfg = settings
    aggs = aggregates

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with command_side(cfg, aggs, schema_dir) as side:
            app.state.side = side
            yield

    app = FastAPI(
        title="eventfold command API",
        version="0.1.0",
        description="Send commands to event-sourced streams; events land in Kafka.",
        lifespan=lifespan,
    )
    auth.install(app, cfg.auth, service="command API")
    problems.install(app)
    app.include_router(command_router(aggs))
    app.include_router(router)
    app.include_router(root_router(cfg.command_api.console_url or "/docs"))
    openapi.extend(app, lambda doc: openapi.add_schemas(doc, command_schemas(aggs)))
    drain = cfg.command_api.max_body_drain_bytes
    app.add_middleware(
        BodySizeLimit,
        max_bytes=cfg.command_api.max_body_bytes,
        drain_bytes=drain,
        by_path={batch.PATH: cfg.command_api.command_batch_max_body_bytes},
    )
    app.add_middleware(HeaderSizeLimit, drain_bytes=drain)
    app.add_middleware(CorrelationMiddleware)
    auth.install_cors(app, cfg.auth)
    return app
