"""The bank's transfer saga end to end: HTTP, the broker, the services as processes.

The command API, the query API, the projector and `eventfold serve
process-managers` run as child processes of the bank app. Transfers complete,
fail and are compensated; a deadline stored before the process manager was
killed fires after its restart; and a process manager killed again and again
moves each transfer's money exactly once (read back from the account topic).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from eventfold.kafka import create_topics
from eventfold.settings import DatabaseSettings, Settings
from examples.bank import app as bank
from tests.conftest import create_database, drop_database
from tests.e2e.processes import started
from tests.helpers import read_topic, uid, wait_until
from tests.support import processes


@dataclass
class Bank:
    settings: Settings
    commands: httpx.AsyncClient
    queries: httpx.AsyncClient
    tmp: Path

    async def send(self, stream_type: str, stream_id: str, kind: str, **data: Any) -> httpx.Response:
        body = {"type": kind, "data": data}
        return await self.commands.post(f"/commands/{stream_type}/{stream_id}", json=body)

    async def account(self, owner: str, balance: int = 0, *, closed: bool = False) -> str:
        aid = uid("acc")
        assert (await self.send("account", aid, "OpenAccount", owner=owner)).status_code == 200
        if balance:
            assert (await self.send("account", aid, "Deposit", amount=balance)).status_code == 200
        if closed:
            assert (await self.send("account", aid, "CloseAccount")).status_code == 200
        return aid

    async def transfer(self, source: str, target: str, amount: int) -> str:
        tid = uid("t")
        sent = await self.send(
            "transfer", tid, "RequestTransfer", source=source, target=target, amount=amount
        )
        assert sent.status_code == 200, sent.text
        return tid

    async def view(self, projection: str, stream_id: str) -> dict[str, Any] | None:
        got = await self.queries.get(f"/views/{projection}/{stream_id}")
        return got.json() if got.status_code == 200 else None

    async def ended(self, tid: str, status: str) -> dict[str, Any] | None:
        doc = await self.view("transfers", tid)
        if doc is not None and doc["status"] in ("completed", "failed", "compensated"):
            assert doc["status"] == status, doc
            return doc
        return None

    async def balance(self, aid: str) -> int:
        doc = await self.view("accounts", aid)
        assert doc is not None
        return int(doc["balance"])

    async def instances(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        got = await self.queries.get("/process-managers/transfers/instances", params=params)
        assert got.status_code == 200, got.text
        return list(got.json()["instances"])

    def process_managers(self, deadline_s: float = 30.0) -> subprocess.Popen[bytes]:
        env = processes.settings_env(self.settings)
        env["BANK_TRANSFER_DEADLINE_S"] = str(deadline_s)
        return processes.start(["serve", "process-managers"], env, self.tmp / "process-managers.log")


@pytest.fixture
async def own_pg(pg_admin_url: str) -> AsyncIterator[DatabaseSettings]:
    url = await create_database(pg_admin_url)
    try:
        yield DatabaseSettings(write_db_url=url, read_db_url=url)
    finally:
        await drop_database(pg_admin_url, url)


@pytest.fixture
async def bank_services(make_settings: Any, own_pg: DatabaseSettings, tmp_path: Path) -> AsyncIterator[Bank]:
    settings = make_settings(own_pg)
    await create_topics(settings.kafka, bank.topics(settings.kafka))
    command_api = await started(settings, "command-api")
    query_api = await started(settings, "query-api")
    projector = processes.start(
        ["serve", "projector"], processes.settings_env(settings), tmp_path / "proj.log"
    )
    try:
        async with (
            httpx.AsyncClient(base_url=command_api.url, timeout=30) as commands,
            httpx.AsyncClient(base_url=query_api.url, timeout=30) as queries,
        ):
            yield Bank(settings, commands, queries, tmp_path)
    finally:
        processes.terminate(projector)


def _ledger_references(records: list[Any]) -> Counter[tuple[str, str, str]]:
    """(account, event type, reference) of each account event, first occurrence of each version only."""
    from schemas.mapper import decode_value

    seen: set[tuple[str, int]] = set()
    out: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        env = decode_value(r.value)
        if (env.stream_id, env.version) in seen:
            continue  # a publisher retry may repeat a version; the first one counts
        seen.add((env.stream_id, env.version))
        if env.type in ("Withdrawn", "Deposited"):
            out[(env.stream_id, env.type, env.data["reference"])] += 1
    return out


async def test_transfers_complete_fail_and_are_compensated(bank_services: Bank) -> None:
    b = bank_services
    rich, payee, poor = await b.account("rich", 100), await b.account("payee"), await b.account("poor")
    closed = await b.account("gone", closed=True)
    pm = b.process_managers()
    try:
        done = await b.transfer(rich, payee, 30)
        failed = await b.transfer(poor, payee, 10)
        compensated = await b.transfer(rich, closed, 20)
        await wait_until(lambda: b.ended(done, "completed"), timeout=40, what="completed")
        doc = await wait_until(lambda: b.ended(failed, "failed"), timeout=40, what="failed")
        assert doc["reason"].startswith("insufficient_funds")
        doc = await wait_until(lambda: b.ended(compensated, "compensated"), timeout=40, what="compensated")
        assert doc["reason"].startswith("account_closed")
        steps = await b.queries.get(f"/views/transfers/{compensated}/transfer_steps")
        assert [s["step"] for s in steps.json()["items"]] == ["requested", "debited", "compensated"]

        async def settled() -> bool:
            return (await b.balance(rich), await b.balance(payee), await b.balance(poor)) == (70, 30, 0)

        await wait_until(settled, timeout=20, what="balances")

        # An instance ends when the manager reads its transfer's last event,
        # which the read model may have projected a moment before.
        async def listed() -> dict[str, str]:
            return {i["instance"]: i["status"] for i in await b.instances()}

        async def all_done() -> bool:
            return await listed() == {done: "done", failed: "done", compensated: "done"}

        await wait_until(all_done, timeout=20, what="instances done")
        assert await listed() == {done: "done", failed: "done", compensated: "done"}
        assert await b.instances("stuck") == []
    finally:
        processes.terminate(pm)


async def test_a_deadline_stored_before_a_crash_fires_after_the_restart(bank_services: Bank) -> None:
    """The withdrawal is held up (its account's head locked), the manager killed, the deadline passes."""
    b = bank_services
    source, target = await b.account("src", 50), await b.account("dst")
    write = await asyncpg.connect(
        make_url(b.settings.db.write_db_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    tx = write.transaction()
    await tx.start()
    await write.execute(
        "SELECT 1 FROM streams WHERE stream_type = 'account' AND stream_id = $1 FOR UPDATE", source
    )
    pm = b.process_managers(deadline_s=3)
    try:
        tid = await b.transfer(source, target, 50)

        async def waiting() -> dict[str, Any] | None:
            found = [i for i in await b.instances("active") if i["instance"] == tid]
            return found[0] if found and found[0]["pending"] else None

        instance = await wait_until(waiting, timeout=40, what="the withdrawal to be pending")
        assert [p["type"] for p in instance["pending"]] == ["Withdraw"]
        processes.kill(pm)
    finally:
        await tx.rollback()
        await write.close()
        processes.terminate(pm)

    async def passed() -> bool:
        return time.time() > instance["deadline"]

    await wait_until(passed, timeout=10, what="the deadline to pass")
    pm = b.process_managers(deadline_s=3)
    try:
        doc = await wait_until(lambda: b.ended(tid, "compensated"), timeout=40, what="compensated")
        assert doc["reason"] == "not completed within 3 s"

        async def refunded() -> bool:
            return await b.balance(source) == 50

        await wait_until(refunded, timeout=20, what="the refund")
        assert await b.balance(target) == 0
        records = await read_topic(b.settings.kafka, b.settings.kafka.topic("account"))
        moves = {k: n for k, n in _ledger_references(records).items() if k[2] == tid}
        assert moves == {(source, "Withdrawn", tid): 1, (source, "Deposited", tid): 1}
    finally:
        processes.terminate(pm)


async def test_a_manager_killed_again_and_again_moves_each_transfers_money_once(bank_services: Bank) -> None:
    b = bank_services
    accounts = [await b.account(f"o{n}", 1000) for n in range(4)]
    rng = random.Random(7)
    pairs = [rng.sample(accounts, 2) for _ in range(40)]
    pm = b.process_managers()
    transfers = [await b.transfer(src, dst, 10 + n) for n, (src, dst) in enumerate(pairs)]

    async def ended_count(at_least: int) -> bool:
        return len(await b.instances("done")) >= at_least

    try:
        for threshold in (5, 15, 25):
            await wait_until(lambda t=threshold: ended_count(t), timeout=60, what=f"{threshold} ended")
            processes.kill(pm)
            pm = b.process_managers()
        await wait_until(lambda: ended_count(len(transfers)), timeout=90, what="every transfer")
        for t in transfers:
            assert await b.ended(t, "completed")
    finally:
        processes.terminate(pm)

    async def conserved() -> bool:
        return sum([await b.balance(a) for a in accounts]) == 4000

    await wait_until(conserved, timeout=20, what="balances")
    records = await read_topic(b.settings.kafka, b.settings.kafka.topic("account"))
    moves = _ledger_references(records)
    for tid, (src, dst) in zip(transfers, pairs, strict=True):
        assert moves[(src, "Withdrawn", tid)] == 1, tid
        assert moves[(dst, "Deposited", tid)] == 1, tid
        assert moves[(src, "Deposited", tid)] == 0, tid
    assert await b.instances("stuck") == []
