"""The warehouse app: two aggregates, two read models, no routes of its own."""

from __future__ import annotations

from eventfold import App
from examples.warehouse.domain import ORDERS, PRODUCTS
from examples.warehouse.views import ORDER_BOOK, STOCK

app = App(name="warehouse", aggregates=[PRODUCTS, ORDERS], projections=[STOCK, ORDER_BOOK])
