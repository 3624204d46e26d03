"""The bank example as the tests serve it: its App and the parts tests build services from."""

from __future__ import annotations

from eventfold.aggregate import Aggregates
from eventfold.projection import Projection
from eventfold.settings import Settings
from examples.bank import app as bank

__all__ = ["all_topics", "bank", "default_aggregates", "default_projections"]


def default_aggregates() -> Aggregates:
    return bank.write_side()


def default_projections() -> list[Projection]:
    return list(bank.projections)


def all_topics(settings: Settings) -> list[str]:
    return bank.topics(settings.kafka)
