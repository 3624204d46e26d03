"""The warehouse example: two aggregates (products and orders) and their read models.

`EVENTFOLD_APP=examples.warehouse:app eventfold dev` serves it.
"""

from examples.warehouse.app import app

__all__ = ["app"]
