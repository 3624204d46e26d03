"""What this deployment serves: the aggregates and projections, in one place."""

from __future__ import annotations

from command_api.aggregate import Aggregates
from command_api.domain import default_aggregates
from eventfold.settings import Settings


def aggregates() -> Aggregates:
    return default_aggregates()


def all_topics(settings: Settings) -> list[str]:
    return [settings.kafka.topic(a.stream_type) for a in aggregates()]
