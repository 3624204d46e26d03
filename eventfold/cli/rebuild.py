"""`eventfold rebuild`: drives projector.rebuild with a rich progress bar."""

from __future__ import annotations

from rich.console import Console

from eventfold.app import App
from eventfold.cli.replay import _bar, quiet_kafka_client
from eventfold.db import create_engine
from eventfold.runner import stoppable
from eventfold.settings import Settings


async def run_rebuild(settings: Settings, app: App, name: str, *, console: Console) -> None:
    from projector.rebuild import RebuildProgress, rebuild_projection

    quiet_kafka_client()
    projection = app.projection(name)
    engine = create_engine(settings.db.read_db_url, pool_size=2)
    try:
        with _bar(console) as bar:
            task = bar.add_task(f"rebuild {name}", total=None, rate="-")

            def progress(p: RebuildProgress) -> None:
                bar.update(
                    task,
                    description=f"rebuild {name} g{p.generation} ({p.phase})",
                    completed=p.done,
                    total=p.total,
                    rate=f"{p.rate:,.0f}",
                )

            result = await stoppable(
                rebuild_projection(settings, projection, engine, progress),
                f"rebuild of {name}",
                "its new generation was dropped and the live tables serve as before",
            )
    finally:
        await engine.dispose()
    console.print(
        f"rebuilt {projection.name} as generation {result.generation}: {result.records} records, "
        f"{result.rounds} catch-up rounds in {result.seconds:.1f}s; the live projector paused "
        f"{result.switch_seconds * 1000:.0f} ms for the swap"
    )
