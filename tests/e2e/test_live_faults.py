"""Live subscriptions across process deaths: the projector's and a query API's.

Real processes over the real broker and PostgreSQL: two query API processes,
each with a subscriber to one account. The projector is SIGKILLed right
after committing a batch (before the consumer group heard of it): both
subscribers still get that change, once, and the next projector's redelivery
of the same records sends nothing again. Then a query API process is
SIGKILLed and started again on its port while a change is made: its
subscriber reconnects from its last id and gets that change, once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from eventfold.client import EventfoldClient, LiveChange
from eventfold.settings import DatabaseSettings, Settings
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import uid


async def _next_change(live: Any, timeout: float = 60) -> LiveChange:
    while True:
        e: LiveChange = await asyncio.wait_for(anext(live), timeout)
        if e.event == "change":
            return e


async def test_no_change_is_lost_or_repeated_when_the_projector_or_a_query_api_dies(
    make_settings: Any, own_pg: DatabaseSettings, tmp_path: Path
) -> None:
    # The first command goes to topics made moments before, while four service
    # processes start on the same machine: its acknowledgement can take longer
    # than the suite's 3 s publish timeout, and this test is about live changes.
    settings: Settings = make_settings(own_pg, kafka={"publish_timeout_s": 15.0})
    commands = await started(settings, "command-api", log=tmp_path / "command-api.log")
    query_a = await started(settings, "query-api", log=tmp_path / "query-a.log")
    query_b = await started(settings, "query-api", log=tmp_path / "query-b.log")
    dying = ServiceProcess(
        settings, "projector", module="tests.e2e.projector_dies_after_commit", log=tmp_path / "dying.log"
    )
    projector = ServiceProcess(settings, "projector", log=tmp_path / "projector.log")
    sid = uid("acc")
    try:
        async with (
            httpx.AsyncClient(base_url=commands.url) as http,
            EventfoldClient(commands.url, query_a.url) as a,
            EventfoldClient(commands.url, query_b.url) as b,
        ):
            live_a, live_b = a.subscribe("accounts", sid), b.subscribe("accounts", sid)
            states = await asyncio.gather(anext(live_a), anext(live_b))
            assert [s.event for s in states] == ["state", "state"] and states[0].document is None

            async def send(kind: str, **data: Any) -> int:
                r = await http.post(f"/commands/account/{sid}", json={"type": kind, "data": data})
                assert r.status_code == 200, r.text
                return int(r.json()["version"])

            # The projector commits the opening and dies before anything else.
            dying.start()
            await send("OpenAccount", owner="ann")
            assert await dying.wait_exit(60) == -9
            opened = await asyncio.gather(_next_change(live_a), _next_change(live_b))
            assert [e.document["version"] for e in opened if e.document] == [1, 1]

            # The next projector is sent the same records again; nothing reaches the subscribers twice.
            projector.start()
            v2 = await send("Deposit", amount=5)
            after = await asyncio.gather(_next_change(live_a), _next_change(live_b))
            assert [e.document["version"] for e in after if e.document] == [v2, v2]

            # Query API A dies; a change is made while it is down; it comes back on its port.
            query_a.kill()
            await query_a.wait_exit()
            v3 = await send("Deposit", amount=7)
            b_got = await _next_change(live_b)
            query_a.start()
            await query_a.ready()
            a_got = await _next_change(live_a)
            for got in (a_got, b_got):
                assert got.document is not None and got.document["version"] == v3
                assert got.document["balance"] == 12
            # And nothing more is pending for either: the next change is the next one sent.
            v4 = await send("Deposit", amount=1)
            tail = await asyncio.gather(_next_change(live_a), _next_change(live_b))
            assert [e.document["version"] for e in tail if e.document] == [v4, v4]
            await live_a.aclose()
            await live_b.aclose()
    finally:
        for p in (projector, dying, query_a, query_b, commands):
            p.stop()
