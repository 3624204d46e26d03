"""What a deployment serves: one `App` declares the aggregates and read models.

A team writes its domain in its own package and declares an `App` there; every
entry point (`eventfold dev`, `serve`, `replay`, `migrate`, ...) loads it from
`EVENTFOLD_APP=package.module:attribute`. The declaration is pure data: the
services read it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventfold.aggregate import Aggregate, Aggregates
from eventfold.process import ProcessManager
from eventfold.projection import Projection
from eventfold.reaction import Reactor
from eventfold.settings import KafkaSettings
from schemas.registry import StreamContract


@dataclass(frozen=True)
class App:
    """A domain served by eventfold: aggregates (the write side) and projections (the read side).

    `routers` are extra FastAPI routers the query API mounts beside the generic
    `/views` routes, for read endpoints shaped by hand. `schema_dir` holds the
    JSON Schema of every released event version (`eventfold schemas export`
    writes it, `eventfold schemas check` guards it); without one, the check
    has no history to compare against.
    """

    name: str
    aggregates: Sequence[Aggregate[Any]] = ()
    projections: Sequence[Projection] = ()
    routers: Sequence[Any] = field(default_factory=tuple)
    schema_dir: Path | None = None
    # Durable side effects on events (eventfold/reaction.py), served by `eventfold serve reactors`.
    reactors: Sequence[Reactor] = ()
    # Commands caused by events (eventfold/process.py), served by `eventfold serve process-managers`.
    process_managers: Sequence[ProcessManager[Any]] = ()

    def __post_init__(self) -> None:
        _unique("stream type", [a.stream_type for a in self.aggregates], self.name)
        _unique("projection", [p.name for p in self.projections], self.name)
        tables = [t.name for p in self.projections for t in p.tables]
        _unique("read table", tables, self.name)
        # Reactors keep offsets and failures beside the projections', keyed by name.
        _unique("projection or reactor", [p.name for p in self.projections] + self.reactor_names, self.name)
        _unique("process manager", [m.name for m in self.process_managers], self.name)

    def write_side(self) -> Aggregates:
        return Aggregates(self.aggregates)

    @property
    def contracts(self) -> list[StreamContract]:
        """Every stream type the app writes or reads, each once."""
        seen: dict[str, StreamContract] = {a.stream_type: a.contract for a in self.aggregates}
        for p in self.projections:
            seen.setdefault(p.stream_type, p.contract)
        for r in self.reactors:
            for c in r.contracts:
                seen.setdefault(c.stream_type, c)
        for m in self.process_managers:
            for c in m.contracts:
                seen.setdefault(c.stream_type, c)
        return list(seen.values())

    @property
    def reactor_names(self) -> list[str]:
        return [r.name for r in self.reactors]

    def event_topics(self, kafka: KafkaSettings) -> list[str]:
        return [kafka.topic(c.stream_type) for c in self.contracts]

    def topics(self, kafka: KafkaSettings) -> list[str]:
        """Every topic the app needs: one per stream type, and its dead-letter topic."""
        from eventfold.kafka import dlq_topic  # aiokafka only when topics are needed

        events = self.event_topics(kafka)
        return events + [dlq_topic(t) for t in events]

    def projection(self, name: str) -> Projection:
        for p in self.projections:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.projections) or "none"
        raise ValueError(f"no projection named {name!r} (known: {known})")

    def reactor(self, name: str) -> Reactor:
        for r in self.reactors:
            if r.name == name:
                return r
        known = ", ".join(self.reactor_names) or "none"
        raise ValueError(f"no reactor named {name!r} (known: {known})")

    def process_manager(self, name: str) -> ProcessManager[Any]:
        for m in self.process_managers:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.process_managers) or "none"
        raise ValueError(f"no process manager named {name!r} (known: {known})")


def _unique(kind: str, names: list[str], app: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"app {app!r} declares the {kind} {', '.join(dupes)} more than once")
