"""`eventfold serve SERVICE`: one service of an app in the foreground (what a container runs)."""

from __future__ import annotations

import asyncio

from eventfold.app import App
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
) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    if service == "command-api":
        from command_api.bootstrap import create_app

        server = http_server(
            create_app(settings, app.write_side(), app.schema_dir),
            host or settings.command_api.host,
            port or settings.command_api.command_port,
        )
        await run_servers([server], stop)
        return
    if service == "query-api":
        from query_api.bootstrap import create_app as query_app

        server = http_server(
            query_app(settings, app.projections, app.routers, app.reactors, app.process_managers),
            host or settings.query_api.host,
            port or settings.query_api.query_port,
        )
        await run_servers([server], stop)
        return
    if service == "projector":
        from projector.runtime import run_projectors

        chosen = list(app.projections) if projection is None else [app.projection(projection)]
        await run_projectors(settings, chosen, stop)
        return
    if service == "reactors":
        from projector.reactors import run_reactors

        await run_reactors(settings, list(app.reactors), stop)
        return
    if service == "publisher":
        # The outbox relay alone, without HTTP: publishes what command API
        # processes committed but could not publish (crash, outage).
        from command_api.bootstrap import command_side

        async with command_side(settings, app.write_side()):
            await stop.wait()
        return
    if service == "process-managers":
        from projector.process_managers import run_process_managers

        await run_process_managers(settings, app.process_managers, app.write_side(), stop)
        return
    raise ValueError(f"unknown service {service!r}: {', '.join(SERVICES)}")
