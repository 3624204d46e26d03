"""`eventfold replay`: drives projector.replay with a rich progress bar.

Whatever goes wrong ends in one line on stderr and a non-zero exit (a
RuntimeError for the CLI): a replay that could not start changed nothing,
and one that failed midway was undone.
"""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.exc import SQLAlchemyError

from eventfold.app import App
from eventfold.db import create_engine
from eventfold.runner import stoppable
from eventfold.settings import Settings


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} ev/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the closing summary says the rest; an error stays one line
    )


def quiet_kafka_client() -> None:
    """The client logs every refused connection itself; the CLI says once what failed."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def run_replay(
    settings: Settings,
    app: App,
    name: str,
    *,
    write_side: bool,
    console: Console,
    workers: int | None = None,
) -> None:
    from projector.replay import ReplayRefused, replay_projection, replay_workers, replay_write_side

    quiet_kafka_client()
    # Names are checked before the progress bar starts, so a typo is one line.
    aggregate = projection = None
    if write_side:
        known = app.write_side()
        if name not in known.registry:
            kinds = ", ".join(a.stream_type for a in known)
            raise LookupError(f"no stream type named {name!r} (known: {kinds})")
        aggregate = known.get(name)
    else:
        projection = app.projection(name)
    with _bar(console) as bar:
        task = bar.add_task(f"replay {name}", total=None, rate="-")

        def progress(done: int, total: int) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
            bar.update(task, completed=done, total=total, rate=rate)

        if aggregate is not None:
            engine = create_engine(settings.db.write_db_url, pool_size=2)
            try:
                written = await stoppable(
                    replay_write_side(settings, aggregate, engine, progress=progress),
                    f"replay of the {name} stream heads",
                    "nothing was written",
                )
            finally:
                await engine.dispose()
            console.print(f"write side: {written} {name} stream heads refilled")
            return
        assert projection is not None
        engine = create_engine(settings.db.read_db_url, pool_size=2)
        try:
            result = await stoppable(
                replay_projection(
                    settings, projection, engine, progress=progress, workers=replay_workers(settings, workers)
                ),
                f"replay of {name}",
                "it was undone and serves what it served before",
            )
        except ReplayRefused as exc:
            raise RuntimeError(f"replay of {name} did not start, nothing was changed: {exc}") from None
        except (KafkaError, SQLAlchemyError, OSError, TimeoutError) as exc:
            raise RuntimeError(
                f"replay of {name} failed and was undone; it serves what it served before: {exc!r}"
            ) from None
        finally:
            await engine.dispose()
    console.print(
        f"replayed {projection.name}: {result.records} records, {result.applied} applied, "
        f"{result.failures} failures in {result.seconds:.1f}s"
    )
