"""Commands and events of the two stream types: `product` and `order`."""

from __future__ import annotations

from pydantic import Field

from eventfold import Command, Event, declare_stream

Quantity = Field(gt=0, le=1_000_000)
Name = Field(min_length=1, max_length=200)


class RegisterProduct(Command):
    name: str = Name


class Restock(Command):
    quantity: int = Quantity


class Reserve(Command):
    quantity: int = Quantity
    order_id: str = Field(min_length=1, max_length=128)


class ProductRegistered(Event):
    name: str = Field(max_length=200)


class Restocked(Event):
    quantity: int


class Reserved(Event):
    quantity: int
    order_id: str = Field(max_length=128)


PRODUCT = declare_stream(
    "product",
    commands=[RegisterProduct, Restock, Reserve],
    events=[ProductRegistered, Restocked, Reserved],
)


class PlaceOrder(Command):
    customer: str = Name
    product_id: str = Field(min_length=1, max_length=128)
    quantity: int = Quantity


class ShipOrder(Command):
    pass


class CancelOrder(Command):
    reason: str = Field(default="", max_length=200)


class OrderPlaced(Event):
    customer: str = Field(max_length=200)
    product_id: str = Field(max_length=128)
    quantity: int


class OrderShipped(Event):
    pass


class OrderCancelled(Event):
    reason: str = Field(max_length=200)


ORDER = declare_stream(
    "order",
    commands=[PlaceOrder, ShipOrder, CancelOrder],
    events=[OrderPlaced, OrderShipped, OrderCancelled],
)
