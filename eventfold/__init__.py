"""eventfold: event sourcing and CQRS on Kafka, served from a domain you declare.

The names a domain package needs are exported here:

    from eventfold import (App, Aggregate, Change, Command, Event, Projection, Reactor, Rejected,
                           declare_stream)

The rest of this package is the shared plumbing the services stand on
(settings, database and Kafka factories, problems, observability), and, in
`eventfold.cli`, the composition root that loads an `App` and serves it.
"""

from eventfold.aggregate import Aggregate, Rejected, replace
from eventfold.app import App
from eventfold.process import Dispatch, ProcessManager, Refusal, Step
from eventfold.projection import Change, Doc, Projection
from eventfold.reaction import Reactor
from schemas.base import Command, Event
from schemas.envelope import EnvelopeMeta
from schemas.registry import declare_stream

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "App",
    "Change",
    "Command",
    "Dispatch",
    "Doc",
    "EnvelopeMeta",
    "Event",
    "ProcessManager",
    "Projection",
    "Reactor",
    "Refusal",
    "Rejected",
    "Step",
    "declare_stream",
    "replace",
]
