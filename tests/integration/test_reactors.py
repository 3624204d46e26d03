"""Reactors over the real broker, PostgreSQL and a real SMTP server: at least once, in order per stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from rich.console import Console

from eventfold import EnvelopeMeta, Event, Reactor
from eventfold.cli.dlq import run_list, run_retry
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import Settings
from examples.bank.contracts import ACCOUNT
from examples.bank.welcome import MailSettings, recipient, welcome_reactor
from projector.reactors import run_reactors
from projector.redrive import list_failures
from query_api.status import reactor_report
from query_api.watermarks import WatermarkCache
from tests.helpers import read_topic, uid, wait_until
from tests.support.bank import bank
from tests.support.mail import smtp_server
from tests.support.projection import account_events, fast_projector, produce_envelopes, stored_offsets


@asynccontextmanager
async def running_reactors(settings: Settings, reactors: Sequence[Reactor]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_reactors(settings, list(reactors), stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def _setup(make_settings: Any) -> tuple[Settings, str]:
    settings = make_settings(projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    return settings, topic


async def _caught_up(settings: Settings, name: str, topic: str) -> bool:
    ends: dict[tuple[str, int], int] = {}
    for r in await read_topic(settings.kafka, topic):
        ends[(topic, r.partition)] = r.offset + 1
    stored = await stored_offsets(settings.db.read_db_url, name)
    return bool(stored) and all(stored.get(k, -1) >= v for k, v in ends.items())


async def _assigned(settings: Settings, name: str, topic: str, partitions: int = 4) -> bool:
    stored = await stored_offsets(settings.db.read_db_url, name)
    return len([k for k in stored if k[0] == topic]) == partitions


def _welcome(port: int, **changes: Any) -> Reactor:
    reactor = welcome_reactor(lambda: MailSettings(host="127.0.0.1", port=port))
    return dataclasses.replace(reactor, **changes)


async def test_the_welcome_email_goes_once_to_each_opened_account(make_settings) -> None:
    settings, topic = await _setup(make_settings)
    events = account_events(6, 3, seed=71)  # 6 openings among 18 events
    await produce_envelopes(settings.kafka, topic, events)
    with smtp_server() as (inbox, port):
        reactor = _welcome(port, start="beginning")
        async with running_reactors(settings, [reactor]):
            await wait_until(lambda: _caught_up(settings, reactor.name, topic), timeout=30, what="reactor")
            opened = [e for e in events if e.type == "AccountOpened"]
            assert sorted(inbox.ids()) == sorted(f"<{reactor.key(e.event_id)}@bank.example>" for e in opened)
            assert sorted(str(m["To"]) for m in inbox.messages()) == sorted(
                recipient(e.data["owner"]) for e in opened
            )
            engine = create_engine(settings.db.read_db_url, writer=False)
            try:
                [row] = await reactor_report(
                    engine, [reactor], settings.kafka, WatermarkCache(settings.kafka)
                )
            finally:
                await engine.dispose()
            assert (row["kind"], row["lag"], row["events_applied"], row["dead_letters"]) == (
                "reactor",
                0,
                6,
                0,
            )


async def test_a_new_reactor_starts_at_the_end(make_settings) -> None:
    settings, topic = await _setup(make_settings)
    old = account_events(4, 1, seed=72)
    await produce_envelopes(settings.kafka, topic, old)
    with smtp_server() as (inbox, port):
        reactor = _welcome(port)  # start="end", the default
        async with running_reactors(settings, [reactor]):
            await wait_until(
                lambda: _assigned(settings, reactor.name, topic), timeout=30, what="first assignment"
            )
            new = account_events(3, 1, seed=73)
            await produce_envelopes(settings.kafka, topic, new)

            async def mailed() -> bool:
                return len(inbox.ids()) >= len(new)

            await wait_until(mailed, timeout=30, what="the new accounts' mails")
            await wait_until(lambda: _caught_up(settings, reactor.name, topic), timeout=30, what="reactor")
        assert sorted(inbox.ids()) == sorted(f"<{reactor.key(e.event_id)}@bank.example>" for e in new)


async def test_a_failing_handler_is_retried_with_backoff_until_it_succeeds(make_settings) -> None:
    settings, topic = await _setup(make_settings)
    events = account_events(3, 2, seed=74)
    attempts: dict[str, int] = {}

    async def flaky(meta: EnvelopeMeta, event: Event, key: str) -> None:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] <= 2:
            raise ConnectionError("mail server busy")

    reactor = Reactor(
        name=uid("flaky"),
        contract=ACCOUNT,
        handlers={"Deposited": flaky, "Withdrawn": flaky},
        start="beginning",
        max_attempts=3,
        backoff_s=0.01,
        max_backoff_s=0.05,
    )
    await produce_envelopes(settings.kafka, topic, events)
    async with running_reactors(settings, [reactor]):
        await wait_until(lambda: _caught_up(settings, reactor.name, topic), timeout=30, what="reactor")
    moved = [e for e in events if e.type != "AccountOpened"]
    assert attempts == {reactor.key(e.event_id): 3 for e in moved}
    engine = create_engine(settings.db.read_db_url)
    try:
        assert await list_failures(engine, reactor.name) == []
    finally:
        await engine.dispose()


async def test_a_dead_letter_holds_back_its_stream_only_and_retry_re_drives_it_in_order(
    make_settings,
) -> None:
    settings, topic = await _setup(make_settings)
    events = account_events(4, 4, seed=75)
    poisoned = events[0].stream_id
    handled: list[tuple[str, int]] = []
    fixed = False

    async def note(meta: EnvelopeMeta, event: Event, key: str) -> None:
        if meta.stream_id == poisoned and meta.version == 2 and not fixed:
            raise RuntimeError("template missing")
        handled.append((meta.stream_id, meta.version))

    reactor = Reactor(
        name=uid("ledger-mail"),
        contract=ACCOUNT,
        handlers={t: note for t in ("AccountOpened", "Deposited", "Withdrawn")},
        start="beginning",
        max_attempts=2,
        backoff_s=0.01,
    )
    app = dataclasses.replace(bank, reactors=[reactor])
    await produce_envelopes(settings.kafka, topic, events)
    async with running_reactors(settings, [reactor]):
        await wait_until(lambda: _caught_up(settings, reactor.name, topic), timeout=30, what="reactor")
    others = sorted((e.stream_id, e.version) for e in events if e.stream_id != poisoned)
    assert sorted(h for h in handled if h[0] != poisoned) == others  # the other streams went on
    assert [h for h in handled if h[0] == poisoned] == [(poisoned, 1)]
    engine = create_engine(settings.db.read_db_url)
    try:
        failures = await list_failures(engine, reactor.name)
        assert [(f["reason"], f["offset"]) for f in failures] == [
            ("handler_error", failures[0]["offset"]),
            ("held_back", failures[1]["offset"]),
            ("held_back", failures[2]["offset"]),
        ]
        assert "RuntimeError: template missing (after 2 attempts)" in failures[0]["detail"]
        dead = await read_topic(settings.kafka, dlq_topic(topic))
        assert [(r.key, r.headers["dlq.reason"], r.headers["dlq.projection"]) for r in dead] == [
            (poisoned.encode(), b"handler_error", reactor.name.encode())
        ]
        out = io.StringIO()
        assert await run_list(settings, app, reactor.name, console=Console(file=out, width=300)) == 3
        assert "held_back" in out.getvalue()

        # Still broken: the retry changes nothing and keeps the order.
        await run_retry(settings, app, reactor.name, None, console=Console(file=io.StringIO()))
        assert [f["reason"] for f in await list_failures(engine, reactor.name)] == [
            "handler_error",
            "held_back",
            "held_back",
        ]
        fixed = True
        out = io.StringIO()
        await run_retry(settings, app, None, None, console=Console(file=out, width=300))
        assert "retried 3, handled 3" in out.getvalue()
        assert [h for h in handled if h[0] == poisoned] == [(poisoned, v) for v in (1, 2, 3, 4)]
        assert await list_failures(engine, reactor.name) == []
    finally:
        await engine.dispose()

    # Unblocked: the stream's next event is handled live again.
    await produce_envelopes(
        settings.kafka,
        topic,
        [
            events[0].model_copy(
                update={"version": 5, "type": "Deposited", "event_id": uuid.uuid4(), "data": {"amount": 5}}
            )
        ],
    )
    async with running_reactors(settings, [reactor]):
        await wait_until(lambda: _caught_up(settings, reactor.name, topic), timeout=30, what="reactor")
    assert handled[-1] == (poisoned, 5)
