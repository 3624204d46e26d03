"""Read models: stock per product with its movements, and orders by status and customer."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

from eventfold import Change, Doc, EnvelopeMeta, Event, Projection
from examples.warehouse.contracts import (
    ORDER,
    PRODUCT,
    OrderCancelled,
    OrderPlaced,
    ProductRegistered,
    Reserved,
    Restocked,
)

metadata = MetaData()

stock = Table(
    "warehouse_stock",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
)
movements = Table(
    "warehouse_movements",
    metadata,
    Column("product_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("change", Integer, nullable=False),
    Column("order_id", String(128)),
)
orders = Table(
    "warehouse_orders",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("customer", String(200), nullable=False),
    Column("product_id", String(128), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", String(200)),
)


def _movement(doc: Doc, env: EnvelopeMeta, change: int, order_id: str | None) -> Change:
    row = {"product_id": env.stream_id, "version": env.version, "change": change, "order_id": order_id}
    return Change(doc, [(movements, row)])


def registered(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, ProductRegistered)
    return Change({"name": event.name, "on_hand": 0, "reserved": 0})


def restocked(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Restocked) and doc is not None
    new = {**doc, "on_hand": doc["on_hand"] + event.quantity}
    return _movement(new, env, event.quantity, None)


def reserved(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, Reserved) and doc is not None
    new = {**doc, "on_hand": doc["on_hand"] - event.quantity, "reserved": doc["reserved"] + event.quantity}
    return _movement(new, env, -event.quantity, event.order_id)


def placed(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, OrderPlaced)
    return Change(
        {
            "customer": event.customer,
            "product_id": event.product_id,
            "quantity": event.quantity,
            "status": "placed",
            "reason": None,
        }
    )


def shipped(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert doc is not None
    return Change({**doc, "status": "shipped"})


def cancelled(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, OrderCancelled) and doc is not None
    return Change({**doc, "status": "cancelled", "reason": event.reason})


STOCK = Projection(
    name="stock",
    contract=PRODUCT,
    doc_table=stock,
    child_tables=[movements],
    handlers={"ProductRegistered": registered, "Restocked": restocked, "Reserved": reserved},
)
ORDER_BOOK = Projection(
    name="orders",
    contract=ORDER,
    doc_table=orders,
    handlers={"OrderPlaced": placed, "OrderShipped": shipped, "OrderCancelled": cancelled},
    filters=["status", "customer", "product_id"],
)
