"""The small HTTP port of the consuming services: /healthz, /readyz and /metrics.

The projector, the reactors and the process managers have no API of their
own, but orchestrators need probes and Prometheus needs a scrape target.
Unlike the command API they can do nothing without Kafka, so their readiness
requires both the read store and the broker. `EVENTFOLD_PROJECTOR_METRICS_PORT`
turns the port on (0, the default: no port).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.observability import BROKER_UP, metrics_response
from eventfold.problems import problem_response
from eventfold.settings import Settings


def health_app(engine: AsyncEngine, consumers: Mapping[str, Any], service: str = "projector") -> FastAPI:
    """Probes over one engine and the service's consumers, named as readiness reports them."""
    app = FastAPI(title=f"eventfold {service}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: the read store and the broker answer; partitions assigned are reported."""

        async def database() -> str:
            try:
                async with engine.connect() as conn:
                    await asyncio.wait_for(conn.exec_driver_sql("SELECT 1"), 2.0)
            except Exception as exc:
                return f"unreachable: {type(exc).__name__}"
            return "ok"

        async def broker() -> str:
            if not consumers:
                return "unknown"
            try:
                # topics() always asks the cluster for fresh metadata.
                await asyncio.wait_for(next(iter(consumers.values())).topics(), 2.0)
            except Exception as exc:
                BROKER_UP.set(0)
                return f"unreachable: {type(exc).__name__}"
            BROKER_UP.set(1)
            return "ok"

        db_state, broker_state = await asyncio.gather(database(), broker())
        checks = {"database": db_state, "broker": broker_state}
        for name, consumer in consumers.items():
            checks[name] = f"{len(consumer.assignment())} partition(s) assigned"
        if db_state == "ok" and broker_state in ("ok", "unknown"):
            return JSONResponse({"status": "ready", "checks": checks})
        return problem_response(
            503,
            "not_ready",
            "the read store or the broker is unreachable",
            instance="/readyz",
            checks=checks,
            headers={"Retry-After": "2"},
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return metrics_response()

    return app


def health_port(
    settings: Settings, engine: AsyncEngine, consumers: Mapping[str, Any], stop: asyncio.Event, service: str
) -> list[asyncio.Task[None]]:
    """The port's server as a task to run beside the service's work, if the port is on."""
    cfg = settings.projector
    if not cfg.projector_metrics_port:
        return []
    from eventfold.runner import http_server, run_servers

    server = http_server(health_app(engine, consumers, service), cfg.host, cfg.projector_metrics_port)
    return [asyncio.create_task(run_servers([server], stop), name=f"{service}-health")]
