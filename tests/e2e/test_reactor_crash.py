"""A reactor process killed between the SMTP server's receipt and the offset's write sends again."""

from __future__ import annotations

import signal
from pathlib import Path

from eventfold.kafka import create_topics, dlq_topic
from examples.bank.welcome import WELCOME_EMAIL
from tests.e2e.processes import ServiceProcess
from tests.helpers import read_topic, wait_until
from tests.support.mail import smtp_server
from tests.support.projection import account_events, fast_projector, produce_envelopes, stored_offsets


async def test_a_mail_received_before_a_crash_is_sent_again_with_the_same_message_id(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    [opened] = account_events(1, 1, seed=81)
    key = WELCOME_EMAIL.key(opened.event_id)
    with smtp_server() as (inbox, port):
        env = {"EVENTFOLD_SMTP_HOST": "127.0.0.1", "EVENTFOLD_SMTP_PORT": str(port)}
        first = ServiceProcess(settings, "reactors", log=tmp_path / "first.log", extra_env=env)
        first.start()

        async def assigned() -> bool:
            stored = await stored_offsets(settings.db.read_db_url, WELCOME_EMAIL.name)
            return len([k for k in stored if k[0] == topic]) == settings.kafka.partitions

        await wait_until(assigned, timeout=60, what="the reactor's first assignment")
        inbox.held.clear()  # take the mail, do not answer: the send is still in flight
        await produce_envelopes(settings.kafka, topic, [opened])

        async def received() -> int:
            return len(inbox.ids())

        await wait_until(received, timeout=30, what="the first mail")
        first.kill(signal.SIGKILL)
        await first.wait_exit()
        inbox.held.set()
        assert inbox.ids() == [f"<{key}@bank.example>"]

        second = ServiceProcess(settings, "reactors", log=tmp_path / "second.log", extra_env=env)
        second.start()
        try:
            [record] = [r for r in await read_topic(settings.kafka, topic)]

            async def stored_past() -> bool:
                stored = await stored_offsets(settings.db.read_db_url, WELCOME_EMAIL.name)
                return stored.get((topic, record.partition), 0) > record.offset

            await wait_until(stored_past, timeout=60, what="the restarted reactor to store its offset")
        finally:
            second.stop()
        # At least once, and recognisably the same mail: the receiver can drop the repeat.
        assert inbox.ids() == [f"<{key}@bank.example>"] * 2
