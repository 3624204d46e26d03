"""The contracts: commands, events, the event envelope, positions and the registry."""

from schemas.base import Command, Event
from schemas.envelope import EventEnvelope
from schemas.position import Position
from schemas.registry import Registry, StreamContract, declare_stream

__all__ = [
    "Command",
    "Event",
    "EventEnvelope",
    "Position",
    "Registry",
    "StreamContract",
    "declare_stream",
]
