"""The bank example: accounts with integer balances and a ledger per account.

`eventfold dev` serves it when `EVENTFOLD_APP` is unset (`examples.bank:app`).
"""

from examples.bank.app import app

__all__ = ["app"]
