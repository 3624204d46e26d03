"""Pure aggregates: no I/O is imported here."""

from eventfold.aggregate import Aggregates
from command_api.domain.account import ACCOUNT_AGGREGATE


def default_aggregates() -> Aggregates:
    return Aggregates([ACCOUNT_AGGREGATE])
