"""The projector's small HTTP port: /healthz, /readyz and /metrics.

The projector has no API of its own, but orchestrators need probes and
Prometheus needs a scrape target. Unlike the command API, it can do nothing
without Kafka, so its readiness requires both the read store and the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.observability import BROKER_UP, metrics_response
from eventfold.problems import problem_response


def health_app(engine: AsyncEngine, runtimes: Sequence[object]) -> FastAPI:
    app = FastAPI(title="eventfold projector", docs_url=None, redoc_url=None, openapi_url=None)

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
            if not runtimes:
                return "unknown"
            try:
                # topics() always asks the cluster for fresh metadata.
                await asyncio.wait_for(runtimes[0].consumer.topics(), 2.0)  # type: ignore[attr-defined]
            except Exception as exc:
                BROKER_UP.set(0)
                return f"unreachable: {type(exc).__name__}"
            BROKER_UP.set(1)
            return "ok"

        db_state, broker_state = await asyncio.gather(database(), broker())
        checks = {"database": db_state, "broker": broker_state}
        for rt in runtimes:
            name = rt.projection.name  # type: ignore[attr-defined]
            assigned = rt.consumer.assignment()  # type: ignore[attr-defined]
            checks[f"projection:{name}"] = f"{len(assigned)} partition(s) assigned"
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
