"""Shared plumbing for eventfold: settings, database and Kafka adapters, the CLI.

The three services (`command_api`, `projector`, `query_api`) and the contracts
(`schemas`) live in their own top-level packages; this one holds only what all
of them need, so that none of them imports another.
"""

__version__ = "0.1.0"
