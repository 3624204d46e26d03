"""`eventfold dlq list|retry`: inspect and re-drive a projection's recorded failures."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from eventfold.db import create_engine
from eventfold.settings import Settings


async def run_list(settings: Settings, projection: str | None, *, console: Console) -> int:
    from projector.redrive import list_failures

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
    settings: Settings, projection: str | None, ids: list[int] | None, *, console: Console
) -> None:
    from eventfold.wiring import projections
    from projector.projection import by_name
    from projector.redrive import list_failures, retry

    engine = create_engine(settings.db.read_db_url, pool_size=2)
    try:
        if projection is None:
            # Without --projection, every projection that has failures to re-drive.
            names = sorted(
                {r["projection"] for r in await list_failures(engine) if ids is None or r["id"] in ids}
            )
        else:
            names = [projection]
        for name in names:
            result = await retry(engine, by_name(projections(), name), ids)
            console.print(
                f"{name}: retried {result.retried}, applied {result.applied}, "
                f"already applied {result.duplicates}, still failing {result.still_failing}"
            )
    finally:
        await engine.dispose()
