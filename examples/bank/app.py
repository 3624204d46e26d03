"""The bank app: the account aggregate, the accounts projection, their routes and the welcome email."""

from __future__ import annotations

from pathlib import Path

from eventfold import App
from examples.bank.account import ACCOUNT_AGGREGATE
from examples.bank.projection import ACCOUNTS
from examples.bank.routes import router
from examples.bank.welcome import WELCOME_EMAIL

app = App(
    name="bank",
    aggregates=[ACCOUNT_AGGREGATE],
    projections=[ACCOUNTS],
    routers=[router],
    reactors=[WELCOME_EMAIL],
    schema_dir=Path(__file__).parent / "schemas",
)
