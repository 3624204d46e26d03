"""`eventfold serve SERVICE`: one service of an app in the foreground (what a container runs)."""

from __future__ import annotations

import asyncio
import os

from eventfold.app import App
from eventfold.cli.members import run_members, watch_parent
from eventfold.runner import http_server, install_stop_signals, run_servers
from eventfold.settings import Settings

SERVICES = ("command-api", "query-api", "projector", "publisher", "reactors", "process-managers")


async def serve_one(
    settings: Settings,
    app: App,
    service: str,
    *,
    host: str | None,
    port: int | None,
    projection: str | None = None,
    processes: int | None = None,
    parent_fd: int | None = None,
) -> int:
    """Serve until a stop signal (or the end of `parent_fd`'s pipe); the exit code."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    if parent_fd is not None:
        watch_parent(parent_fd, stop)
    if service == "command-api":
        from command_api.bootstrap import create_app

        server = http_server(
            create_app(settings, app.write_side(), app.schema_dir),
            host or settings.command_api.host,
            port or settings.command_api.command_port,
        )
        await run_servers([server], stop)
        return 0
    if service == "query-api":
        from query_api.bootstrap import create_app as query_app

        server = http_server(
            query_app(settings, app.projections, app.routers, app.reactors, app.process_managers),
            host or settings.query_api.host,
            port or settings.query_api.query_port,
        )
        await run_servers([server], stop)
        return 0
    if service == "projector":
        from eventfold.db import writer_processes
        from projector.runtime import run_projectors

        chosen = list(app.projections) if projection is None else [app.projection(projection)]
        count = writer_processes(settings.db.read_db_url, processes or settings.projector.projector_processes)
        if count > 1 and parent_fd is None:
            return await _projector_members(settings, count, projection, stop)
        await run_projectors(settings, chosen, stop)
        return 0
    if service == "reactors":
        from projector.reactors import run_reactors

        await run_reactors(settings, list(app.reactors), stop)
        return 0
    if service == "publisher":
        # The outbox relay alone, without HTTP: publishes what command API
        # processes committed but could not publish (crash, outage).
        from command_api.bootstrap import command_side

        async with command_side(settings, app.write_side()):
            await stop.wait()
        return 0
    if service == "process-managers":
        from projector.process_managers import run_process_managers

        await run_process_managers(settings, app.process_managers, app.write_side(), stop)
        return 0
    raise ValueError(f"unknown service {service!r}: {', '.join(SERVICES)}")


async def _projector_members(
    settings: Settings, count: int, projection: str | None, stop: asyncio.Event
) -> int:
    """`count` projector processes in one consumer group; each serves its metrics on a port of its own."""
    args = ["serve", "projector", *(["--projection", projection] if projection else [])]
    port = settings.projector.projector_metrics_port

    def env(n: int) -> dict[str, str]:
        own = {"EVENTFOLD_PROJECTOR_PROCESSES": "1"}
        if port:  # member n on port + n
            own["EVENTFOLD_PROJECTOR_METRICS_PORT"] = str(port + n)
        return {**os.environ, **own}

    return await run_members(args, count, env, stop, settings.projector.projector_stop_grace_s)
