"""In-process counters of one projector process, logged as it goes.

The durable numbers (events applied, failures) live in the read store and
are what GET /projections reports; these are for this process's own logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from projector.batch import Folded


@dataclass
class Counters:
    batches: int = 0
    events_applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    version_gaps: int = 0
    errors: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, folded: Folded) -> None:
        self.batches += 1
        self.events_applied += folded.applied
        self.duplicates += folded.duplicates
        for f in folded.failures:
            self.by_reason[f.reason] = self.by_reason.get(f.reason, 0) + 1
            if f.dead_letter:
                self.dead_letters += 1
            else:
                self.version_gaps += 1
