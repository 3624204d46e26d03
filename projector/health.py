"""The projector's small HTTP port: /healthz, /readyz and /metrics.

The projector has no API of its own, but orchestrators need probes and
Prometheus needs a scrape target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.observability import metrics_response


def health_app(engine: AsyncEngine, runtimes: Sequence[object]) -> FastAPI:
    app = FastAPI(title="eventfold projector", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: the read store answers and every projection has a consumer."""
        checks: dict[str, str] = {}
        try:
            async with engine.connect() as conn:
                await asyncio.wait_for(conn.exec_driver_sql("SELECT 1"), 2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        for rt in runtimes:
            name = rt.projection.name  # type: ignore[attr-defined]
            assigned = rt.consumer.assignment()  # type: ignore[attr-defined]
            checks[f"projection:{name}"] = f"{len(assigned)} partition(s) assigned"
        ok = checks["database"] == "ok"
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return metrics_response()

    return app
