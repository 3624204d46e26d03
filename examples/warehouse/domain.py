"""Pure deciders: a product never reserves more than it holds; an order moves forward only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from eventfold import Aggregate, Command, Event, Rejected, replace
from examples.warehouse.contracts import (
    ORDER,
    PRODUCT,
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


class Product(BaseModel):
    model_config = ConfigDict(frozen=True)

    registered: bool = False
    on_hand: int = 0


def decide_product(state: Product, command: Command) -> Sequence[Event]:
    if isinstance(command, RegisterProduct):
        if state.registered:
            raise Rejected("product_exists", "this product is already registered")
        return [ProductRegistered(name=command.name)]
    if not state.registered:
        raise Rejected("no_such_product", "register the product first")
    if isinstance(command, Restock):
        return [Restocked(quantity=command.quantity)]
    if isinstance(command, Reserve):
        if command.quantity > state.on_hand:
            raise Rejected("out_of_stock", f"{state.on_hand} on hand, {command.quantity} asked")
        return [Reserved(quantity=command.quantity, order_id=command.order_id)]
    raise TypeError(f"product does not handle {type(command).__name__}")


def evolve_product(state: Product, event: Event) -> Product:
    if isinstance(event, ProductRegistered):
        return replace(state, registered=True)
    if isinstance(event, Restocked):
        return replace(state, on_hand=state.on_hand + event.quantity)
    if isinstance(event, Reserved):
        return replace(state, on_hand=state.on_hand - event.quantity)
    raise TypeError(f"product does not apply {type(event).__name__}")


class Order(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["new", "placed", "shipped", "cancelled"] = "new"


def decide_order(state: Order, command: Command) -> Sequence[Event]:
    if isinstance(command, PlaceOrder):
        if state.status != "new":
            raise Rejected("order_exists", "this order has already been placed")
        return [
            OrderPlaced(customer=command.customer, product_id=command.product_id, quantity=command.quantity)
        ]
    if state.status == "new":
        raise Rejected("no_such_order", "place the order first")
    if state.status != "placed":
        raise Rejected(f"order_{state.status}", f"the order is {state.status}")
    if isinstance(command, ShipOrder):
        return [OrderShipped()]
    if isinstance(command, CancelOrder):
        return [OrderCancelled(reason=command.reason)]
    raise TypeError(f"order does not handle {type(command).__name__}")


def evolve_order(state: Order, event: Event) -> Order:
    if isinstance(event, OrderPlaced):
        return replace(state, status="placed")
    if isinstance(event, OrderShipped):
        return replace(state, status="shipped")
    if isinstance(event, OrderCancelled):
        return replace(state, status="cancelled")
    raise TypeError(f"order does not apply {type(event).__name__}")


PRODUCTS = Aggregate(contract=PRODUCT, initial=Product(), decide=decide_product, evolve=evolve_product)
ORDERS = Aggregate(contract=ORDER, initial=Order(), decide=decide_order, evolve=evolve_order)
