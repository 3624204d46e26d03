"""The process-manager runtime over the real broker, write store and read store.

The bank's transfer saga runs in-process with the real command path. Sends
fail on purpose after the command was made durable (as a crash between the
send and storing its outcome would), and the runtime must send the same key
again: each transfer's money moves once. A refusal the saga does not handle
leaves the instance `stuck`, listed with the refusal.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition

from command_api.bootstrap import command_side
from eventfold.broker import free_port
from eventfold.db import create_engine
from eventfold.kafka import create_topics, new_producer
from eventfold.process import Dispatch
from eventfold.settings import DatabaseSettings, Settings
from eventfold.tasks import cancel_and_wait
from examples.bank import app as bank
from examples.bank.contracts import CloseAccount, Deposit, OpenAccount
from examples.bank.transfer import RequestTransfer
from examples.bank.transfer_process import transfer_process
from projector.process_managers import ProcessManagerRuntime, Sender, Sent, _SeekOnAssign, command_sender
from projector.process_store import list_instances
from query_api.status import process_manager_report
from query_api.watermarks import WatermarkCache
from schemas.mapper import decode_value
from tests.helpers import read_topic, uid, wait_until
from tests.support.projection import stored_offsets

Run = Callable[[Sender], Awaitable[None]]


async def _instances(settings: Settings, status: str | None = None) -> list[dict[str, Any]]:
    engine = create_engine(settings.db.read_db_url, writer=False)
    try:
        async with engine.connect() as conn:
            return await list_instances(conn, "transfers", status, 1000)
    finally:
        await engine.dispose()


async def _moves(settings: Settings) -> Counter[tuple[str, str, str]]:
    seen: set[tuple[str, int]] = set()
    out: Counter[tuple[str, str, str]] = Counter()
    for r in await read_topic(settings.kafka, settings.kafka.topic("account")):
        env = decode_value(r.value)
        if (env.stream_id, env.version) not in seen and env.type in ("Withdrawn", "Deposited"):
            out[(env.stream_id, env.type, env.data["reference"])] += 1
        seen.add((env.stream_id, env.version))
    return out


async def _with_runtime(settings: Settings, wrap: Callable[[Sender, Sender], Sender], body: Run) -> None:
    """The saga's runtime in a task, sending through `wrap(real sender)`; `body` gets the real sender."""
    await create_topics(settings.kafka, bank.topics(settings.kafka))
    engine = create_engine(settings.db.read_db_url)
    stop = asyncio.Event()
    try:
        async with command_side(settings, bank.write_side()) as side:
            real = command_sender(side.service)
            runtime = ProcessManagerRuntime(
                settings, transfer_process(), engine, bank.write_side(), wrap(real, real)
            )
            task = asyncio.create_task(runtime.run(stop))
            try:
                await body(real)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
                await cancel_and_wait([task])
    finally:
        await engine.dispose()


async def _send(real: Sender, stream_type: str, stream_id: str, command: Any) -> None:
    sent = await real(uid("k"), Dispatch(stream_type, stream_id, command), None)
    assert sent.outcome == "accepted", sent


async def test_a_send_lost_after_the_command_was_durable_is_repeated_under_its_key(
    make_settings: Any, own_pg: DatabaseSettings
) -> None:
    settings = make_settings(own_pg)
    attempts: Counter[str] = Counter()

    def crash_after_first_send(real: Sender, _: Sender) -> Sender:
        async def send(key: str, issue: Dispatch, correlation_id: str | None) -> Sent:
            attempts[key] += 1
            sent = await real(key, issue, correlation_id)
            if attempts[key] == 1:
                raise ConnectionResetError("lost on the way back")
            return sent

        return send

    async def body(real: Sender) -> None:
        accounts = [uid("acc") for _ in range(3)]
        for a in accounts:
            await _send(real, "account", a, OpenAccount(owner="o"))
            await _send(real, "account", a, Deposit(amount=100))
        transfers = [(uid("t"), accounts[n % 3], accounts[(n + 1) % 3]) for n in range(6)]
        for n, (tid, src, dst) in enumerate(transfers):
            await _send(real, "transfer", tid, RequestTransfer(source=src, target=dst, amount=10 + n))

        async def all_done() -> bool:
            # Done, and no command left to resend (a transfer can end before the
            # resend of its last command, which the write store then answers as a repeat).
            done = await _instances(settings, "done")
            return len(done) == len(transfers) and not any(i["pending"] for i in done)

        await wait_until(all_done, timeout=60, what="every transfer done, every command resent")
        moves = await _moves(settings)
        for tid, src, dst in transfers:
            assert moves[(src, "Withdrawn", tid)] == 1, tid
            assert moves[(dst, "Deposited", tid)] == 1, tid
            assert moves[(src, "Deposited", tid)] == 0, tid
        # Every command was sent twice (four per transfer), and took effect once.
        assert len(attempts) == 4 * len(transfers) and set(attempts.values()) == {2}

    await _with_runtime(settings, crash_after_first_send, body)


async def test_a_refusal_the_saga_does_not_handle_leaves_the_instance_stuck_and_listed(
    make_settings: Any, own_pg: DatabaseSettings
) -> None:
    settings = make_settings(own_pg)
    source, closed, tid = uid("acc"), uid("acc"), uid("t")

    def close_the_source_before_the_refund(real: Sender, _: Sender) -> Sender:
        async def send(key: str, issue: Dispatch, correlation_id: str | None) -> Sent:
            if issue.stream_id == source and isinstance(issue.command, Deposit):
                await _send(real, "account", source, CloseAccount())  # its balance went to the transfer
            return await real(key, issue, correlation_id)

        return send

    async def body(real: Sender) -> None:
        await _send(real, "account", source, OpenAccount(owner="o"))
        await _send(real, "account", source, Deposit(amount=25))
        await _send(real, "account", closed, OpenAccount(owner="o"))
        await _send(real, "account", closed, CloseAccount())
        await _send(real, "transfer", tid, RequestTransfer(source=source, target=closed, amount=25))

        async def stuck() -> list[dict[str, Any]]:
            return await _instances(settings, "stuck")

        [instance] = await wait_until(stuck, timeout=60, what="the instance to be stuck")
        assert instance["instance"] == tid
        assert "refused Deposit" in instance["reason"] and "account_closed" in instance["reason"]
        assert instance["state"]["phase"] == "refunding"
        moves = await _moves(settings)
        assert moves[(source, "Withdrawn", tid)] == 1 and moves[(source, "Deposited", tid)] == 0
        # GET /projections and `eventfold status` report it: the manager is stuck, one instance.
        engine = create_engine(settings.db.read_db_url, writer=False)
        try:
            saga = transfer_process()
            [report] = await process_manager_report(
                engine, [saga], settings.kafka, WatermarkCache(settings.kafka)
            )
        finally:
            await engine.dispose()
        assert report["kind"] == "process_manager" and report["state"] == "stuck", report
        assert report["instances"]["stuck"] == 1 and report["dead_letters"] == 1
        assert {p["topic"] for p in report["partitions"]} == set(saga.topics(settings.kafka))

    await _with_runtime(settings, close_the_source_before_the_refund, body)


async def test_an_assignment_that_cannot_read_the_stored_offsets_applies_nothing_until_a_seek(
    make_settings: Any,
) -> None:
    """The database is down while partitions are assigned: the batch fetched next is not applied.

    Records fetched from wherever the consumer stands (not the stored
    offsets) would be applied out of place; the runtime drops them and seeks.
    """
    settings = make_settings()
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing_listens_here")

    async def never(key: str, dispatch: Dispatch, correlation_id: str | None) -> Sent:
        raise AssertionError("nothing may be sent")

    runtime = ProcessManagerRuntime(settings, transfer_process(), engine, bank.write_side(), never)
    try:
        tp = TopicPartition(settings.kafka.topic("transfer"), 0)
        await _SeekOnAssign(runtime).on_partitions_assigned([tp])
        assert runtime.needs_seek
        assert tp not in runtime.expected
        assert await runtime._apply([], runtime.generation) is None
    finally:
        await runtime.consumer.stop()
        await engine.dispose()


async def test_an_event_delivered_again_after_the_transfer_ended_leaves_it_done(
    make_settings: Any, own_pg: DatabaseSettings
) -> None:
    """A publisher that lost an acknowledgement publishes the event again: the topic holds it twice.

    The repeat of the request that started an ended transfer must not bring
    its instance back to `active` (with no deadline and nothing to send, it
    would never end again), nor start the transfer over.
    """
    settings = make_settings(own_pg)
    source, target, tid = uid("acc"), uid("acc"), uid("t")
    topic = settings.kafka.topic("transfer")

    async def body(real: Sender) -> None:
        for account in (source, target):
            await _send(real, "account", account, OpenAccount(owner="o"))
        await _send(real, "account", source, Deposit(amount=50))
        await _send(real, "transfer", tid, RequestTransfer(source=source, target=target, amount=20))

        async def done() -> list[dict[str, Any]]:
            return [i for i in await _instances(settings, "done") if i["instance"] == tid]

        await wait_until(done, timeout=60, what="the transfer to end")
        [request] = [
            r
            for r in await read_topic(settings.kafka, topic)
            if decode_value(r.value).type == "TransferRequested"
        ]
        producer = new_producer(settings.kafka)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic,
                request.value,
                key=request.key,
                partition=request.partition,
                headers=list(request.headers.items()),
            )
        finally:
            await producer.stop()

        async def read_past_the_repeat() -> bool:
            stored = await stored_offsets(settings.db.read_db_url, "process:transfers")
            return stored.get((topic, sent.partition), 0) > sent.offset

        await wait_until(read_past_the_repeat, timeout=30, what="the saga to read the repeated request")
        [instance] = await _instances(settings)
        assert (instance["instance"], instance["status"]) == (tid, "done")
        assert instance["state"]["phase"] == "ended" and not instance["pending"]
        moves = await _moves(settings)
        assert moves[(source, "Withdrawn", tid)] == 1 and moves[(target, "Deposited", tid)] == 1

    await _with_runtime(settings, lambda real, _: real, body)
