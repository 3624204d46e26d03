"""Pure bookkeeping of a reactor's progress: which offsets may be stored.

Events of different streams are handled concurrently, so they finish out of
order. A partition's stored offset may only pass events that are finished
(handled, passed over, dead-lettered or held back): it is the lowest offset
still in hand, or one past the last offset dispatched when none is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Partition = tuple[str, int]  # (topic, partition)


@dataclass
class Progress:
    """Offsets in hand per partition, and the next offset to store for each."""

    in_hand: dict[Partition, set[int]] = field(default_factory=dict)
    after_last: dict[Partition, int] = field(default_factory=dict)
    stored: dict[Partition, int] = field(default_factory=dict)

    def start(self, tp: Partition, offset: int) -> None:
        """The partition is read from `offset` on (where its stored offset is)."""
        self.in_hand[tp] = set()
        self.after_last[tp] = offset
        self.stored[tp] = offset

    def dispatched(self, tp: Partition, offset: int) -> None:
        self.in_hand.setdefault(tp, set()).add(offset)
        self.after_last[tp] = max(self.after_last.get(tp, 0), offset + 1)

    def finished(self, tp: Partition, offset: int) -> None:
        self.in_hand.get(tp, set()).discard(offset)

    def pending(self) -> int:
        return sum(len(s) for s in self.in_hand.values())

    def to_store(self) -> dict[Partition, int]:
        """Partitions whose storable offset moved past the stored one, with that offset."""
        out = {}
        for tp, last in self.after_last.items():
            hand = self.in_hand.get(tp)
            offset = min(hand) if hand else last
            if offset > self.stored.get(tp, -1):
                out[tp] = offset
        return out

    def saved(self, offsets: dict[Partition, int]) -> None:
        for tp, offset in offsets.items():
            self.stored[tp] = max(self.stored.get(tp, 0), offset)

    def forget(self, tps: Iterable[Partition]) -> None:
        for tp in tps:
            self.in_hand.pop(tp, None)
            self.after_last.pop(tp, None)
            self.stored.pop(tp, None)
