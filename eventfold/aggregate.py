"""How an aggregate is declared: a contract, an initial state, decide and evolve.

`decide` and `evolve` are pure; everything with I/O lives in the store and the
publisher, which know aggregates only through this declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from schemas.base import Command, Event
from schemas.registry import Registry, StreamContract, UnknownStreamType

S = TypeVar("S", bound=BaseModel)


def replace(state: S, **changes: Any) -> S:
    """A changed copy of a frozen state.

    `evolve` applies events that `decide` already checked, so the copy skips
    validation (pydantic's `model_copy` costs several times more, per event).
    """
    return type(state).model_construct(**{**state.__dict__, **changes})


class Rejected(Exception):
    """A command broke a domain rule; `code` is stable and machine-readable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    contract: StreamContract
    initial: S
    decide: Callable[[S, Command], Sequence[Event]]
    evolve: Callable[[S, Event], S]

    @property
    def stream_type(self) -> str:
        return self.contract.stream_type

    def fold(self, events: Iterable[Event], state: S | None = None) -> S:
        current = self.initial if state is None else state
        for event in events:
            current = self.evolve(current, event)
        return current

    def load_state(self, raw: Mapping[str, Any] | None) -> S:
        if raw is None:
            return self.initial
        return type(self.initial).model_validate(raw)


class Aggregates:
    """The aggregates a command API serves, by stream type."""

    def __init__(self, aggregates: Iterable[Aggregate[Any]]) -> None:
        self._by_type = {a.stream_type: a for a in aggregates}
        self.registry = Registry(a.contract for a in self._by_type.values())

    def get(self, stream_type: str) -> Aggregate[Any]:
        try:
            return self._by_type[stream_type]
        except KeyError:
            raise UnknownStreamType(stream_type) from None

    def __iter__(self) -> Any:
        return iter(self._by_type.values())
