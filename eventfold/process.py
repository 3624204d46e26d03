"""How a process manager is declared: events in, commands out, with a state per instance.

A process manager coordinates streams: it reads events of the stream types in
its `contracts`, groups them into instances (`correlate` names the instance an
event belongs to, or None for an event it ignores), and for each event a pure
`handle` turns the instance's state into a `Step`: the new state, the commands
to send, and a deadline. `on_deadline` is called when the deadline passes
before a step moved it; `on_refused` when a command it sent was refused (None
leaves the instance `stuck`, listed with the refusal). All three are pure, as
`decide` is; the runtime (projector/process_managers.py) stores the state,
sends the commands through the command path with idempotency keys derived from
their cause, and wakes deadlines, so the declaration is tested without I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from eventfold.settings import KafkaSettings
from schemas.base import Command, Event
from schemas.envelope import EnvelopeMeta
from schemas.registry import StreamContract

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A command to send to one stream: decided and published like any other."""

    stream_type: str
    stream_id: str
    command: Command


@dataclass(frozen=True, slots=True)
class Step(Generic[S]):
    """What one event (a deadline, a refusal) does to an instance.

    `deadline` is when `on_deadline` is due, None for no deadline: a step that
    keeps waiting returns the deadline again (keep it in the state). `done`
    ends the instance for good: it is kept and listed, its deadline never
    fires, and events correlated to it later (a repeat, a late movement) are
    not handed to `handle`. Its commands not yet sent are still sent.
    """

    state: S
    commands: Sequence[Dispatch] = ()
    deadline: datetime | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command the process manager sent, refused by its aggregate with this code."""

    issue: Dispatch
    code: str
    detail: str


def _unhandled(state: Any, instance: str, refusal: Refusal) -> None:
    return None


@dataclass(frozen=True)
class ProcessManager(Generic[S]):
    name: str
    contracts: Sequence[StreamContract]
    initial: S
    correlate: Callable[[EnvelopeMeta, Event], str | None]
    handle: Callable[[S, EnvelopeMeta, Event], Step[S]]
    on_deadline: Callable[[S, str], Step[S]]
    on_refused: Callable[[S, str, Refusal], Step[S] | None] = field(default=_unhandled)

    def __post_init__(self) -> None:
        if not self.contracts:
            raise ValueError(f"process manager {self.name!r} reads no stream type")
        types = [c.stream_type for c in self.contracts]
        if len(set(types)) != len(types):
            raise ValueError(f"process manager {self.name!r} lists a stream type twice: {types}")

    @property
    def stream_types(self) -> list[str]:
        return [c.stream_type for c in self.contracts]

    def contract(self, stream_type: str) -> StreamContract:
        for c in self.contracts:
            if c.stream_type == stream_type:
                return c
        raise KeyError(stream_type)

    def topics(self, kafka: KafkaSettings) -> list[str]:
        return [kafka.topic(t) for t in self.stream_types]

    def group_id(self, kafka: KafkaSettings) -> str:
        """One consumer group per process manager (and per topic prefix)."""
        return f"{kafka.topic_prefix}.process.{self.name}"

    @property
    def offsets_key(self) -> str:
        """Its row key in `projection_offsets`: apart from any projection's, even one of the same name."""
        return f"process:{self.name}"

    def load_state(self, raw: Mapping[str, Any] | None) -> S:
        if raw is None:
            return self.initial
        return type(self.initial).model_validate(raw)

    def untouched(self, step: Step[S]) -> bool:
        """A step that leaves a new instance as it was: nothing to store (an event it ignores)."""
        return step.state == self.initial and not step.commands and step.deadline is None and not step.done
