"""The bank app: accounts and transfers, their projections, routes and the transfer saga.

`BANK_TRANSFER_DEADLINE_S` (default 30) is how long a transfer has to complete
before the saga compensates it.
"""

from __future__ import annotations

import os
from pathlib import Path

from eventfold import App
from examples.bank.account import ACCOUNT_AGGREGATE
from examples.bank.projection import ACCOUNTS
from examples.bank.routes import router
from examples.bank.transfer import TRANSFER_AGGREGATE
from examples.bank.transfer_process import DEFAULT_DEADLINE_S, transfer_process
from examples.bank.transfers import TRANSFERS
from examples.bank.welcome import WELCOME_EMAIL

app = App(
    name="bank",
    aggregates=[ACCOUNT_AGGREGATE, TRANSFER_AGGREGATE],
    projections=[ACCOUNTS, TRANSFERS],
    routers=[router],
    reactors=[WELCOME_EMAIL],
    schema_dir=Path(__file__).parent / "schemas",
    process_managers=[
        transfer_process(float(os.environ.get("BANK_TRANSFER_DEADLINE_S", DEFAULT_DEADLINE_S)))
    ],
)
