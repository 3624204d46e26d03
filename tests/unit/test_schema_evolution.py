"""Event schema versions: upcasting, the recorded history and its check."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from typer.testing import CliRunner

from eventfold.cli.main import app
from examples.bank.contracts import ACCOUNT, Deposited, Withdrawn
from schemas.base import Event
from schemas.evolution import check, export
from schemas.registry import MissingUpcaster, declare_stream
from tests.support.bank import bank


def test_v1_money_movements_load_as_v2_with_empty_reference() -> None:
    assert ACCOUNT.load_event("Deposited", 1, {"amount": 4}) == Deposited(amount=4, reference="")
    assert ACCOUNT.load_event("Withdrawn", 1, {"amount": 2}) == Withdrawn(amount=2, reference="")
    assert ACCOUNT.load_event("Deposited", 2, {"amount": 4, "reference": "inv-9"}).reference == "inv-9"


def test_recorded_history_matches_the_code() -> None:
    assert bank.schema_dir is not None
    assert [f for f in check([ACCOUNT], bank.schema_dir) if f.fatal] == []


def test_cli_check_passes_on_this_repository() -> None:
    result = CliRunner().invoke(app, ["schemas", "check"])
    assert result.exit_code == 0, result.output


class Shipped(Event):
    parcel: str


def _record(tmp: Path, *events: type[Event]) -> None:
    export([declare_stream("parcel", [], list(events))], tmp)


def test_incompatible_change_without_new_version_fails(tmp_path: Path) -> None:
    _record(tmp_path, Shipped)

    class Shipped2(Event):  # the same v1, with a field renamed
        parcel_id: str

    Shipped2.__name__ = "Shipped"
    findings = check([declare_stream("parcel", [], [Shipped2])], tmp_path)
    assert any(f.fatal and "'parcel' was removed" in f.problem for f in findings)
    assert any(f.fatal and "'parcel_id' is required" in f.problem for f in findings)


def test_new_version_needs_an_upcaster_and_an_export(tmp_path: Path) -> None:
    _record(tmp_path, Shipped)

    class ShippedV2(Event):
        schema_version = 2
        parcel: str
        carrier: str

    ShippedV2.__name__ = "Shipped"
    bare = declare_stream("parcel", [], [ShippedV2])
    problems = [f.problem for f in check([bare], tmp_path) if f.fatal]
    assert "no upcaster from v1 to v2" in problems
    upcast = declare_stream("parcel", [], [ShippedV2], {("Shipped", 1): lambda d: {**d, "carrier": "?"}})
    export([upcast], tmp_path)
    assert [f for f in check([upcast], tmp_path) if f.fatal] == []
    assert upcast.load_event("Shipped", 1, {"parcel": "p"}) == ShippedV2(parcel="p", carrier="?")
    try:
        bare.load_event("Shipped", 1, {"parcel": "p"})
    except MissingUpcaster as exc:
        assert "v1 -> v2" in str(exc)
    else:
        raise AssertionError("a v1 record loaded without an upcaster")


def test_adding_an_optional_field_is_compatible(tmp_path: Path) -> None:
    _record(tmp_path, Shipped)

    class ShippedMore(Event):
        parcel: str
        note: str = Field(default="")

    ShippedMore.__name__ = "Shipped"
    findings = check([declare_stream("parcel", [], [ShippedMore])], tmp_path)
    assert findings and not any(f.fatal for f in findings)
