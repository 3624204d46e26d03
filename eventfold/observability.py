"""Metrics (Prometheus) and structured logs (structlog) shared by every service.

Each log line is one JSON object carrying the correlation id of the request or
event being handled, so a command can be followed from HTTP to read table.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventfold.jsonutil import new_id

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Command side
COMMAND_SECONDS = Histogram(
    "eventfold_command_seconds",
    "Command latency, HTTP in to answer out",
    ["stream_type", "outcome"],
    buckets=_LATENCY,
)


@functools.lru_cache(maxsize=1024)
def command_seconds(stream_type: str, outcome: str) -> Any:
    """COMMAND_SECONDS of one stream type and outcome: `labels()` takes a lock and a lookup per call."""
    return COMMAND_SECONDS.labels(stream_type, outcome)


EVENTS_APPENDED = Counter(
    "eventfold_events_appended_total", "Events committed to the outbox", ["stream_type"]
)
OUTBOX_BACKLOG = Gauge("eventfold_outbox_backlog", "Outbox rows not yet acknowledged by Kafka")
OUTBOX_OLDEST_AGE = Gauge("eventfold_outbox_oldest_age_seconds", "Age of the oldest outbox row")
PUBLISH_FAILURES = Counter("eventfold_publish_failures_total", "Failed attempts to publish to Kafka")
# Set by every broker probe (the command API's readiness check and its watch loop,
# the projector's readiness check): 1 when the broker answered, 0 when it did not.
BROKER_UP = Gauge("eventfold_broker_up", "1 when the Kafka broker answered the last probe, else 0")
COMMIT_BATCH = Histogram(
    "eventfold_commit_batch_size",
    "Commands per group-commit transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

# Projector
EVENTS_APPLIED = Counter("eventfold_projector_events_applied_total", "Events applied", ["projection"])
PROJECTOR_BATCH = Histogram(
    "eventfold_projector_batch_size",
    "Records per projector batch",
    ["projection"],
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
)
PROJECTOR_BATCH_SECONDS = Histogram(
    "eventfold_projector_batch_seconds", "Time to apply one batch", ["projection"], buckets=_LATENCY
)
PARTITION_LAG = Gauge(
    "eventfold_projector_lag", "High-watermark minus next offset", ["projection", "topic", "partition"]
)
DEAD_LETTERS = Counter("eventfold_dead_letters_total", "Records dead-lettered", ["projection", "reason"])
REBUILD_PROGRESS = Gauge("eventfold_rebuild_progress_ratio", "Rebuild progress, 0..1", ["projection"])

# Query side
QUERY_SECONDS = Histogram("eventfold_query_seconds", "Query latency", ["route", "status"], buckets=_LATENCY)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Route stdlib and structlog records through one JSON renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs an exception's traceback as text (the console renderer formats its own).
    rendering: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class CorrelationMiddleware:
    """Take `X-Correlation-ID` (or make one) and `traceparent`; bind them to logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get("x-correlation-id", "")
        correlation_id = given if _SAFE_ID.match(given) else new_id()
        traceparent = headers.get("traceparent", "")
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        scope["state"]["traceparent"] = traceparent if _TRACEPARENT.match(traceparent) else None

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-correlation-id", correlation_id.encode()))
            await send(message)

        with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
            await self.app(scope, receive, tagged_send)


class QueryTiming:
    """Time every request into `eventfold_query_seconds`, labelled by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            if path not in ("/metrics", "/healthz", "/readyz"):
                QUERY_SECONDS.labels(path, str(status)).observe(time.perf_counter() - started)
