"""How a projection is declared: a stream type, a document table and pure handlers.

A projection keeps one "document" row per stream (key `id`, with the stream
`version` it reflects) and may append rows to child tables. A handler turns
the current document and one event into a `Change`; the runtime does the rest
(batching, offsets, dead letters, the version guard), so adding a read model
is declaring one, never touching the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from eventfold.settings import KafkaSettings
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from schemas.registry import StreamContract

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """What one event does to the read model: the new document and rows to append.

    The runtime sets `id` and `version` of the document itself, so a handler
    cannot get the version guard wrong.
    """

    doc: Doc
    appends: Sequence[tuple[Table, dict[str, Any]]] = ()


Handler = Callable[[Doc | None, EnvelopeMeta, Event], Change]


@dataclass(frozen=True)
class Projection:
    name: str
    contract: StreamContract
    doc_table: Table
    handlers: Mapping[str, Handler]
    child_tables: Sequence[Table] = field(default_factory=tuple)
    # Bumping the version rebuilds the read model from the topic, blue/green.
    version: int = 1
    # Document columns the query API lets callers filter on (equality).
    filters: Sequence[str] = ()

    def __post_init__(self) -> None:
        # Every event type needs a handler: an event the projection skipped
        # would leave a hole in the document's versions and read as a gap.
        missing = set(self.contract.events) - set(self.handlers)
        if missing:
            raise ValueError(f"projection {self.name!r} has no handler for {sorted(missing)}")
        for col in ("id", "version"):
            if col not in self.doc_table.c:
                raise ValueError(f"table {self.doc_table.name!r} needs a {col!r} column")
        unknown = [f for f in self.filters if f not in self.doc_table.c]
        if unknown:
            raise ValueError(
                f"projection {self.name!r} filters on {unknown}, not columns of {self.doc_table.name!r}"
            )

    @property
    def stream_type(self) -> str:
        return self.contract.stream_type

    @property
    def tables(self) -> list[Table]:
        return [self.doc_table, *self.child_tables]

    def topic(self, kafka: KafkaSettings) -> str:
        return kafka.topic(self.stream_type)

    def group_id(self, kafka: KafkaSettings) -> str:
        """One consumer group per projection (and per topic prefix)."""
        return f"{kafka.topic_prefix}.projection.{self.name}"


def by_name(projections: Sequence[Projection], name: str) -> Projection:
    for p in projections:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in projections)
    raise ValueError(f"no projection named {name!r} (known: {known})")
