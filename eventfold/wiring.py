"""What this deployment serves: the aggregates and projections, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventfold.aggregate import Aggregates
from command_api.domain import default_aggregates
from eventfold.kafka import dlq_topic
from eventfold.settings import Settings

if TYPE_CHECKING:
    from eventfold.projection import Projection


def aggregates() -> Aggregates:
    return default_aggregates()


def projections() -> list[Projection]:
    from projector.accounts import ACCOUNTS

    return [ACCOUNTS]


def all_topics(settings: Settings) -> list[str]:
    events = [settings.kafka.topic(a.stream_type) for a in aggregates()]
    return events + [dlq_topic(t) for t in events]


def asyncapi_document(settings: Settings) -> str:
    """The AsyncAPI document as JSON text, stable for diffing."""
    import orjson

    from eventfold import __version__
    from schemas.asyncapi import document

    doc = document((a.contract for a in aggregates()), settings.kafka.topic, version=__version__)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
