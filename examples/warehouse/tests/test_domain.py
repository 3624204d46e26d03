"""The warehouse's rules, in memory: given events, when a command, then events or a refusal."""

from eventfold.testing import given
from examples.warehouse.contracts import (
    CancelOrder,
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    PlaceOrder,
    ProductRegistered,
    RegisterProduct,
    Reserve,
    Reserved,
    Restock,
    Restocked,
    ShipOrder,
)
from examples.warehouse.domain import ORDERS, PRODUCTS

REGISTERED = ProductRegistered(name="lamp")


def test_a_product_is_registered_once_and_restocked() -> None:
    given(PRODUCTS).when(RegisterProduct(name="lamp")).then(REGISTERED)
    given(PRODUCTS, REGISTERED).when(RegisterProduct(name="lamp")).rejects("product_exists")
    given(PRODUCTS).when(Restock(quantity=3)).rejects("no_such_product")
    assert given(PRODUCTS, REGISTERED, Restocked(quantity=3), Restocked(quantity=4)).state.on_hand == 7


def test_a_product_never_reserves_more_than_it_holds() -> None:
    stocked = given(PRODUCTS, REGISTERED, Restocked(quantity=5))
    stocked.when(Reserve(quantity=5, order_id="o-1")).then(Reserved(quantity=5, order_id="o-1"))
    stocked.when(Reserve(quantity=6, order_id="o-1")).rejects("out_of_stock", match="5 on hand")
    after = stocked.when(Reserve(quantity=4, order_id="o-1"))
    after.when(Reserve(quantity=2, order_id="o-2")).rejects("out_of_stock")
    assert after.state.on_hand == 1


def test_an_order_moves_forward_only() -> None:
    placed = OrderPlaced(customer="ann", product_id="p-1", quantity=2)
    given(ORDERS).when(PlaceOrder(customer="ann", product_id="p-1", quantity=2)).then(placed)
    given(ORDERS).when(ShipOrder()).rejects("no_such_order")
    given(ORDERS, placed).when(ShipOrder()).then(OrderShipped())
    given(ORDERS, placed).when(CancelOrder(reason="late")).then(OrderCancelled(reason="late"))
    given(ORDERS, placed, OrderShipped()).when(CancelOrder()).rejects("order_shipped")
    given(ORDERS, placed, OrderCancelled(reason="")).when(ShipOrder()).rejects("order_cancelled")
    given(ORDERS, placed).when(PlaceOrder(customer="b", product_id="p", quantity=1)).rejects("order_exists")
