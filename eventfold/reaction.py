"""How a reactor is declared: side effects on events that survive crashes.

A reactor sends something to the outside world (a mail, a webhook) for events
of one or more stream types. The declaration is pure data: a name, the
contracts it reads, an async handler per event type, and a retry policy. The
runtime (projector/reactors.py) consumes in a consumer group of its own,
retries a failing handler with exponential backoff and jitter, dead-letters
the event after `max_attempts`, and stores the reactor's offsets only once an
event was handled or dead-lettered: delivery is at least once. Each call gets
an idempotency key, the same for every delivery of one event to one reactor,
to pass on to the receiver (as a mail's Message-ID, a request's
Idempotency-Key) so that it can drop repeats.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from eventfold.settings import KafkaSettings
from schemas.base import Event
from schemas.envelope import EnvelopeMeta
from schemas.registry import StreamContract

ReactionHandler = Callable[[EnvelopeMeta, Event, str], Awaitable[None]]

# The namespace of reactors' idempotency keys (uuid5 of reactor name and event id).
KEY_NAMESPACE = uuid.UUID("6f1d2c7e-52f4-4c1e-9d0a-4b8a3e5f2a10")


def idempotency_key(reactor: str, event_id: uuid.UUID | str) -> str:
    """The same key for every delivery of one event to one reactor, and different across reactors."""
    return str(uuid.uuid5(KEY_NAMESPACE, f"{reactor}:{event_id}"))


def backoff_delay(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Exponential (`base_s`, twice that, ...) up to `max_s`, scaled by a jitter
    in [0.5, 1) from `jitter` in [0, 1), so reactors failing on one outage
    do not all retry in the same instant.
    """
    step: float = min(max_s, base_s * 2.0 ** max(attempt - 1, 0))
    return step * (0.5 + jitter / 2)


@dataclass(frozen=True)
class Reactor:
    """A durable side effect: `handlers[event_type](meta, event, key)` for each event read.

    Events of types without a handler are passed over. `start="end"` (the
    default) makes a reactor that never ran begin at the current end of its
    topics, so deploying one does not act on history; `"beginning"` reads it
    all. Give `contract` for one stream type or `contracts` for several.
    """

    name: str
    handlers: Mapping[str, ReactionHandler]
    contract: StreamContract | None = None
    contracts: Sequence[StreamContract] = ()
    start: Literal["end", "beginning"] = "end"
    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        every = ([self.contract] if self.contract is not None else []) + list(self.contracts)
        if not every:
            raise ValueError(f"reactor {self.name!r} needs a contract (or contracts)")
        object.__setattr__(self, "contracts", tuple({c.stream_type: c for c in every}.values()))
        if not self.name or len(self.name) > 100:
            raise ValueError("a reactor's name needs 1 to 100 characters")
        if self.start not in ("end", "beginning"):
            raise ValueError(f"reactor {self.name!r}: start is 'end' or 'beginning', not {self.start!r}")
        if self.max_attempts < 1:
            raise ValueError(f"reactor {self.name!r}: max_attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"reactor {self.name!r}: need 0 <= backoff_s <= max_backoff_s")
        known = {t for c in self.contracts for t in c.events}
        unknown = sorted(set(self.handlers) - known)
        if unknown:
            raise ValueError(f"reactor {self.name!r} handles {unknown}, not events of its contracts")
        if not self.handlers:
            raise ValueError(f"reactor {self.name!r} has no handlers")

    @property
    def stream_types(self) -> list[str]:
        return [c.stream_type for c in self.contracts]

    def contract_for(self, stream_type: str) -> StreamContract | None:
        return next((c for c in self.contracts if c.stream_type == stream_type), None)

    def topics(self, kafka: KafkaSettings) -> list[str]:
        return [kafka.topic(t) for t in self.stream_types]

    def group_id(self, kafka: KafkaSettings) -> str:
        """One consumer group per reactor (and per topic prefix), apart from the projections'."""
        return f"{kafka.topic_prefix}.reactor.{self.name}"

    def key(self, event_id: uuid.UUID | str) -> str:
        return idempotency_key(self.name, event_id)
