"""The pure parts of reactors: the declaration, keys, backoff and the storable offsets."""

from __future__ import annotations

import uuid

import pytest

from eventfold import App, EnvelopeMeta, Event, Reactor
from eventfold.reaction import backoff_delay, idempotency_key
from eventfold.settings import KafkaSettings
from examples.bank.contracts import ACCOUNT
from examples.bank.projection import ACCOUNTS
from examples.bank.welcome import recipient, welcome_message
from projector.reaction_progress import Progress


async def _noop(meta: EnvelopeMeta, event: Event, key: str) -> None:
    return None


def test_the_key_is_stable_per_reactor_and_event_and_differs_across_them() -> None:
    event = uuid.uuid4()
    assert idempotency_key("mail", event) == idempotency_key("mail", str(event))
    assert idempotency_key("mail", event) != idempotency_key("hook", event)
    assert idempotency_key("mail", event) != idempotency_key("mail", uuid.uuid4())
    assert uuid.UUID(idempotency_key("mail", event)).version == 5


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    assert [backoff_delay(a, 0.5, 3.0, 0.0) for a in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert backoff_delay(2, 0.5, 3.0, 0.999) == pytest.approx(0.9995)


def test_a_reactor_declaration_is_checked() -> None:
    with pytest.raises(ValueError, match="needs a contract"):
        Reactor(name="r", handlers={"AccountOpened": _noop})
    with pytest.raises(ValueError, match="not events of its contracts"):
        Reactor(name="r", contract=ACCOUNT, handlers={"Nope": _noop})
    with pytest.raises(ValueError, match="start"):
        Reactor(name="r", contract=ACCOUNT, handlers={"AccountOpened": _noop}, start="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        Reactor(name="r", contract=ACCOUNT, handlers={"AccountOpened": _noop}, max_attempts=0)
    r = Reactor(name="r", contracts=[ACCOUNT, ACCOUNT], handlers={"AccountOpened": _noop})
    kafka = KafkaSettings(topic_prefix="p")
    assert (r.stream_types, r.topics(kafka), r.group_id(kafka)) == (
        ["account"],
        ["p.account.events"],
        "p.reactor.r",
    )


def test_an_app_refuses_a_reactor_named_like_a_projection_or_another_reactor() -> None:
    r = Reactor(name="accounts", contract=ACCOUNT, handlers={"AccountOpened": _noop})
    with pytest.raises(ValueError, match="accounts more than once"):
        App(name="a", projections=[ACCOUNTS], reactors=[r])
    with pytest.raises(ValueError, match="more than once"):
        App(name="a", reactors=[r, r])
    app = App(name="a", reactors=[r])
    assert app.reactor("accounts") is r
    assert app.topics(KafkaSettings(topic_prefix="p")) == ["p.account.events", "p.account.events.dlq"]


def test_offsets_pass_only_finished_events() -> None:
    p = Progress()
    tp = ("t", 0)
    p.start(tp, 10)
    assert p.to_store() == {}
    for offset in (10, 11, 12):
        p.dispatched(tp, offset)
    p.finished(tp, 11)  # another stream's event finished first
    assert p.to_store() == {}
    p.finished(tp, 10)
    assert p.to_store() == {tp: 12}
    p.saved({tp: 12})
    p.finished(tp, 12)
    assert p.to_store() == {tp: 13}


def test_the_welcome_message_carries_the_key_as_its_message_id() -> None:
    msg = welcome_message("hello@bank.example", "Ada Lovelace", "a-1", "k-1")
    assert (msg["Message-ID"], msg["To"]) == ("<k-1@bank.example>", "ada-lovelace@customers.bank.example")
    assert recipient("ada@example.org") == "ada@example.org"
