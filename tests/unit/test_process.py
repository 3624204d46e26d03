"""The process-manager declaration, its place in an App, and eventfold.testing's `process`."""

from __future__ import annotations

import pytest

from eventfold import App, Dispatch
from eventfold.settings import KafkaSettings
from eventfold.testing import process
from examples.bank.contracts import ACCOUNT, Deposited, Withdraw
from examples.bank.transfer import TRANSFER, CompleteTransfer, TransferRequested
from examples.bank.transfer_process import transfer_process
from tests.support.counter import COUNTER, Incremented

SAGA = transfer_process()


def test_an_app_reads_the_topics_of_its_process_managers() -> None:
    app = App(name="x", process_managers=[SAGA])
    assert app.event_topics(KafkaSettings(topic_prefix="p")) == ["p.transfer.events", "p.account.events"]
    assert app.process_manager("transfers") is SAGA
    with pytest.raises(ValueError, match="no process manager named 'nope'"):
        app.process_manager("nope")


def test_an_app_refuses_two_process_managers_of_one_name() -> None:
    with pytest.raises(ValueError, match="process manager transfers more than once"):
        App(name="x", process_managers=[SAGA, transfer_process(5)])


def test_offsets_are_kept_apart_from_a_projection_of_the_same_name() -> None:
    assert SAGA.offsets_key == "process:transfers" and SAGA.stream_types == ["transfer", "account"]
    assert SAGA.group_id(KafkaSettings(topic_prefix="p")) == "p.process.transfers"


def test_then_names_the_commands_expected_and_sent() -> None:
    run = process(SAGA).when(TransferRequested(source="a", target="b", amount=1), stream_id="t")
    with pytest.raises(AssertionError, match=r"(?s)expected:.*CompleteTransfer.*got:.*Withdraw"):
        run.then(Dispatch(TRANSFER.stream_type, "t", CompleteTransfer()))
    run.then(Dispatch(ACCOUNT.stream_type, "a", Withdraw(amount=1, reference="t")))


def test_an_event_outside_the_contracts_is_refused() -> None:
    with pytest.raises(AssertionError, match="Incremented is not an event of 'transfers'"):
        process(SAGA).when(Incremented(by=1), stream_id="c")
    assert COUNTER.stream_type == "counter"


def test_no_deadline_can_pass_on_an_instance_without_one() -> None:
    with pytest.raises(AssertionError, match="no deadline can pass"):
        process(SAGA).deadline_passes()


def test_refusing_a_command_that_was_not_sent_fails() -> None:
    run = process(SAGA).when(TransferRequested(source="a", target="b", amount=1), stream_id="t")
    with pytest.raises(AssertionError, match="none at 3"):
        run.refused("x", command=3)
    assert process(SAGA).when(Deposited(amount=1, reference="t"), stream_id="b").ignored


def test_a_command_sent_again_under_its_key_has_the_same_id() -> None:
    # Its events' causation_id: a key decided twice would show as one id on two decisions.
    from projector.process_managers import command_id

    key = "transfers:4f1c0b8e-0d1e-4b8e-9a51-2f7c3d9e6a10:1"
    assert command_id(key) == command_id(key)
    assert command_id(key) != command_id(key[:-1] + "2")
