"""`eventfold dlq list|retry`: inspect and re-drive the failures of projections and reactors.

A name given with `--projection` may be a projection's or a reactor's (they
share one namespace): a reactor's failures are its dead letters and the
events of their streams held back behind them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from eventfold.app import App
from eventfold.db import create_engine
from eventfold.settings import Settings


async def run_list(settings: Settings, app: App, projection: str | None, *, console: Console) -> int:
    from projector.redrive import list_failures

    if projection is not None:
        _check_name(app, projection)  # an unknown name is an error, not an empty list
    engine = create_engine(settings.db.read_db_url, pool_size=2, writer=False)
    try:
        rows = await list_failures(engine, projection)
    finally:
        await engine.dispose()
    table = Table("id", "projection", "topic", "partition", "offset", "reason", "detail", "recorded at")
    for r in rows:
        at = datetime.fromtimestamp(r["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            str(r["id"]),
            r["projection"],
            r["topic"],
            str(r["partition"]),
            str(r["offset"]),
            r["reason"],
            r["detail"],
            at,
        )
    console.print(table)
    console.print(f"{len(rows)} failure(s)")
    return len(rows)


async def run_retry(
    settings: Settings, app: App, projection: str | None, ids: list[int] | None, *, console: Console
) -> None:
    from projector.redrive import list_failures, retry

    if projection is not None:
        _check_name(app, projection)
    engine = create_engine(settings.db.read_db_url, pool_size=2)
    try:
        recorded = await list_failures(engine, projection)
        if ids is not None:
            missing = sorted(set(ids) - {r["id"] for r in recorded})
            if missing:
                where = "" if projection is None else f" in projection {projection!r}"
                listed = ", ".join(map(str, missing))
                raise LookupError(
                    f"no dead letter with id {listed}{where}"
                    if len(missing) == 1
                    else f"no dead letters with ids {listed}{where}"
                )
        # Without --projection, every projection that has failures to re-drive.
        names = (
            [projection]
            if projection is not None
            else sorted({r["projection"] for r in recorded if ids is None or r["id"] in ids})
        )
        if not names:
            console.print("no dead letters to retry")
        for name in names:
            if name in app.reactor_names:
                from projector.reaction_redrive import retry_reactor

                result = await retry_reactor(engine, app.reactor(name), settings.kafka, ids)
                console.print(
                    f"{name}: retried {result.retried}, handled {result.applied}, "
                    f"passed over {result.duplicates}, still failing {result.still_failing}"
                )
                continue
            result = await retry(engine, app.projection(name), ids)
            console.print(
                f"{name}: retried {result.retried}, applied {result.applied}, "
                f"already applied {result.duplicates}, still failing {result.still_failing}"
            )
    finally:
        await engine.dispose()


def _check_name(app: App, name: str) -> None:
    if name not in app.reactor_names:
        app.projection(name)  # raises, naming the known projections
