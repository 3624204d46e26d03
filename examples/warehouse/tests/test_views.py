"""The warehouse's read models, in memory: events in, rows out."""

from eventfold.testing import project
from examples.warehouse.contracts import (
    OrderCancelled,
    OrderPlaced,
    ProductRegistered,
    Reserved,
    Restocked,
)
from examples.warehouse.views import ORDER_BOOK, STOCK, movements


def test_stock_counts_what_is_on_hand_and_reserved_with_every_movement() -> None:
    view = project(
        STOCK,
        ProductRegistered(name="lamp"),
        Restocked(quantity=5),
        Reserved(quantity=2, order_id="o-1"),
        stream_id="p-1",
    )
    assert view.doc == {"id": "p-1", "version": 3, "name": "lamp", "on_hand": 3, "reserved": 2}
    assert [(r["version"], r["change"], r["order_id"]) for r in view.rows(movements)] == [
        (2, 5, None),
        (3, -2, "o-1"),
    ]


def test_orders_keep_their_status_and_reason() -> None:
    view = project(
        ORDER_BOOK,
        OrderPlaced(customer="ann", product_id="p-1", quantity=2),
        OrderCancelled(reason="late"),
        stream_id="o-1",
    )
    assert view.doc == {
        "id": "o-1",
        "version": 2,
        "customer": "ann",
        "product_id": "p-1",
        "quantity": 2,
        "status": "cancelled",
        "reason": "late",
    }
