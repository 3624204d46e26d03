"""What this deployment serves: the aggregates and projections, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from command_api.aggregate import Aggregates
from command_api.domain import default_aggregates
from eventfold.kafka import dlq_topic
from eventfold.settings import Settings

if TYPE_CHECKING:
    from projector.projection import Projection


def aggregates() -> Aggregates:
    return default_aggregates()


def projections() -> list[Projection]:
    from projector.accounts import ACCOUNTS

    return [ACCOUNTS]


def all_topics(settings: Settings) -> list[str]:
    events = [settings.kafka.topic(a.stream_type) for a in aggregates()]
    return events + [dlq_topic(t) for t in events]
