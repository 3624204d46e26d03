"""`eventfold status`: every projection's, reactor's and process manager's state as a terminal table.

It reads exactly what `GET /projections` reads (query_api.status), so the two
can never disagree.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from eventfold.app import App
from eventfold.db import create_engine
from eventfold.settings import Settings
from query_api.status import process_manager_report, projection_report, reactor_report
from query_api.watermarks import WatermarkCache


async def gather(settings: Settings, app: App) -> list[dict[str, Any]]:
    engine = create_engine(settings.db.read_db_url, pool_size=1, writer=False)
    try:
        marks = WatermarkCache(settings.kafka)
        projections = await projection_report(engine, list(app.projections), settings.kafka, marks)
        # Reactors and process managers follow, in the same shape, marked by "kind".
        reactors = await reactor_report(engine, list(app.reactors), settings.kafka, marks)
        managers = await process_manager_report(engine, list(app.process_managers), settings.kafka, marks)
        return projections + reactors + managers
    finally:
        await engine.dispose()


def render(report: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="eventfold projections")
    for col in ("projection", "state", "partition", "offset", "high-watermark", "lag"):
        table.add_column(col, justify="right" if col in ("offset", "high-watermark", "lag") else "left")
    for p in report:
        state = {"live": "[green]live[/green]", "failed": "[red]failed[/red]"}.get(p["state"], p["state"])
        first = True
        for part in p["partitions"] or [{"partition": "-", "offset": 0, "high_watermark": None, "lag": None}]:
            table.add_row(
                p["name"] if first else "",
                state if first else "",
                str(part["partition"]),
                str(part["offset"]),
                _n(part["high_watermark"]),
                _n(part["lag"]),
            )
            first = False
        table.add_section()
    console.print(table)
    summary = Table(show_header=True)
    for col in (
        "projection",
        "generation",
        "events applied",
        "dead letters",
        "version gaps",
        "total lag",
        "last event",
        "rebuild",
        "instances",
    ):
        summary.add_column(col)
    for p in report:
        progress = p.get("rebuild_progress")
        rebuild = "-" if progress is None else f"{progress:.0%} {p.get('rebuild_detail') or ''}"
        counts = p.get("instances")
        instances = ", ".join(f"{n} {status}" for status, n in counts.items()) if counts else "-"
        summary.add_row(
            p["name"],
            str(p.get("generation", 1)),
            "-" if p["events_applied"] is None else str(p["events_applied"]),
            str(p["dead_letters"]),
            str(p["version_gaps"]),
            _n(p["lag"]),
            str(p["last_event_at"] or "-"),
            rebuild,
            instances,
        )
    console.print(summary)


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)
