"""What the console's routes need beyond the query side: the write store and a writer of the read store.

The query side reads the read store only. The stream explorer also reads the
write store's stream heads, and re-driving a dead letter writes read rows, so
the console keeps an engine for each, opened lazily (no connection until a
route needs one) and disposed when the app stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from eventfold.db import create_engine
from eventfold.process import ProcessManager
from eventfold.projection import Projection
from eventfold.reaction import Reactor
from eventfold.settings import Settings
from schemas.registry import StreamContract


@dataclass
class ConsoleSide:
    write_store: AsyncEngine  # read only: stream heads for the stream explorer
    read_store_writer: AsyncEngine  # re-drives apply read rows through the projector's path
    contracts: dict[str, StreamContract]  # every stream type the served app reads, by name
    # Set when the server drains: open live tails end with a word to the client.
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def drain(self) -> None:
        self.draining.set()


def known_contracts(
    projections: Sequence[Projection], reactors: Sequence[Reactor], managers: Sequence[ProcessManager[Any]]
) -> dict[str, StreamContract]:
    every = [p.contract for p in projections]
    every += [c for r in reactors for c in r.contracts]
    every += [c for m in managers for c in m.contracts]
    return {c.stream_type: c for c in sorted(every, key=lambda c: c.stream_type)}


@asynccontextmanager
async def console_side(
    settings: Settings,
    projections: Sequence[Projection],
    reactors: Sequence[Reactor],
    managers: Sequence[ProcessManager[Any]],
) -> AsyncIterator[ConsoleSide]:
    """The console's engines, for as long as the app runs."""
    write_store = create_engine(settings.db.write_db_url, pool_size=2, writer=False)
    writer = create_engine(settings.db.read_db_url, pool_size=2)
    try:
        yield ConsoleSide(write_store, writer, known_contracts(projections, reactors, managers))
    finally:
        await writer.dispose()
        await write_store.dispose()
