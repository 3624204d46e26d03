"""What this deployment serves: the aggregates and projections, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from command_api.domain import default_aggregates
from eventfold.aggregate import Aggregates
from eventfold.kafka import dlq_topic
from eventfold.settings import KafkaSettings, Settings
from schemas.registry import StreamContract

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


def asyncapi_spec(contracts: Iterable[StreamContract], kafka: KafkaSettings) -> dict[str, Any]:
    """The AsyncAPI document of these stream types' topics on this cluster."""
    from eventfold import __version__
    from schemas.asyncapi import Cluster, document

    cluster = Cluster(
        bootstrap=kafka.kafka_bootstrap,
        topic_of=kafka.topic,
        dead_letters_of=dlq_topic,
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        min_insync_replicas=kafka.min_insync_replicas,
        security_protocol=kafka.kafka_security_protocol,
        sasl_mechanism=kafka.kafka_sasl_mechanism,
        client_certificate=kafka.kafka_ssl_certfile is not None,
    )
    return document(contracts, cluster, version=__version__)


def asyncapi_document(settings: Settings) -> str:
    """The AsyncAPI document as JSON text, stable for diffing."""
    import orjson

    doc = asyncapi_spec((a.contract for a in aggregates()), settings.kafka)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
