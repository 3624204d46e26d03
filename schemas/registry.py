"""The registry: stream types and the command and event models they accept.

Adding an aggregate is declaring a `StreamContract` and registering it; the
plumbing looks everything up here by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from schemas.base import Command, Event
from schemas.envelope import TypedEnvelope, typed_envelope

# An upcaster turns the data of one schema version of an event into the next.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownStreamType(LookupError):
    pass


class UnknownCommandType(LookupError):
    pass


class UnknownEventType(LookupError):
    pass


class MissingUpcaster(LookupError):
    pass


@dataclass(frozen=True)
class StreamContract:
    stream_type: str
    commands: Mapping[str, type[Command]]
    events: Mapping[str, type[Event]]
    # (event type, from_version) -> upcaster to from_version + 1
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)

    def command_model(self, name: str) -> type[Command]:
        try:
            return self.commands[name]
        except KeyError:
            raise UnknownCommandType(name) from None

    def event_model(self, name: str) -> type[Event]:
        try:
            return self.events[name]
        except KeyError:
            raise UnknownEventType(name) from None

    def upcast(self, name: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring stored event data up to the model's current schema version."""
        target = self.event_model(name).schema_version
        while schema_version < target:
            try:
                step = self.upcasters[(name, schema_version)]
            except KeyError:
                raise MissingUpcaster(f"{name} v{schema_version} -> v{schema_version + 1}") from None
            data = step(data)
            schema_version += 1
        return data

    @cached_property
    def current_records(self) -> TypeAdapter[TypedEnvelope]:
        """Reads a record of any of the stream's events at its current version in one pass.

        Anything it refuses (an older schema version, or bad input) goes the
        general way, `decode_value` then `load_event`, which upcasts or says
        precisely what is wrong.
        """
        models = tuple(typed_envelope(n, m, m.schema_version) for n, m in self.events.items())
        if len(models) == 1:
            return TypeAdapter(models[0])
        union: Any = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007
        return TypeAdapter(union)

    def load_event(self, name: str, schema_version: int, data: dict[str, Any]) -> Event:
        model = self.event_model(name)
        if schema_version > model.schema_version:
            raise UnknownEventType(f"{name} v{schema_version} is newer than this code knows")
        return model.model_validate(self.upcast(name, schema_version, data))


def declare_stream(
    stream_type: str,
    commands: Iterable[type[Command]],
    events: Iterable[type[Event]],
    upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
) -> StreamContract:
    """A contract whose wire type names are the model class names."""
    return StreamContract(
        stream_type=stream_type,
        commands={c.__name__: c for c in commands},
        events={e.__name__: e for e in events},
        upcasters=dict(upcasters or {}),
    )


class Registry:
    """Stream contracts by stream type; immutable once built."""

    def __init__(self, contracts: Iterable[StreamContract] = ()) -> None:
        self._streams: dict[str, StreamContract] = {}
        for c in contracts:
            if c.stream_type in self._streams:
                raise ValueError(f"stream type {c.stream_type!r} declared twice")
            self._streams[c.stream_type] = c

    def stream(self, stream_type: str) -> StreamContract:
        try:
            return self._streams[stream_type]
        except KeyError:
            raise UnknownStreamType(stream_type) from None

    def __contains__(self, stream_type: object) -> bool:
        return stream_type in self._streams

    def __iter__(self) -> Any:
        return iter(self._streams.values())

    @property
    def stream_types(self) -> list[str]:
        return sorted(self._streams)
