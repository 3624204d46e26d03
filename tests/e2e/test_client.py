"""The typed client against a live stack: three service processes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from eventfold.auth import new_key
from eventfold.client import CommandResult, ProblemError
from eventfold.kafka import create_topics
from eventfold.settings import AuthSettings, DatabaseSettings
from examples.bank.client import BankClient as EventfoldClient
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import uid
from tests.support.bank import all_topics


async def test_client_commands_and_queries_with_read_your_writes(
    make_settings, fresh_pg_url: str, tmp_path: Path
) -> None:
    token, entry = new_key("client", ["commands:write", "read"])
    settings = make_settings(
        DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url),
        auth=AuthSettings(api_keys=orjson.dumps([entry.model_dump(mode="json")]).decode()),
    )
    await create_topics(settings.kafka, all_topics(settings))
    commands = await started(settings, "command-api", log=tmp_path / "command.log")
    queries = await started(settings, "query-api", log=tmp_path / "query.log")
    projector = ServiceProcess(settings, "projector", log=tmp_path / "projector.log")
    projector.start()
    sid = uid("cli")
    async with EventfoldClient(commands.url, queries.url, token=token) as ef:
        opened = await ef.send("account", sid, "OpenAccount", {"owner": "Kim"}, expected_version=0)
        assert (opened.version, opened.published) == (1, True)
        paid = await ef.send("account", sid, "Deposit", {"amount": 70}, idempotency_key=f"{sid}-1")
        again = await ef.send("account", sid, "Deposit", {"amount": 70}, idempotency_key=f"{sid}-1")
        assert again.replayed and again.version == paid.version == 2
        # The first query also waits for the projector to join its group.
        account = await ef.account(sid, wait_for=paid.position, wait_timeout=30)
        assert (account.balance, account.version, account.owner) == (70, 2, "Kim")
        spent = await ef.send("account", sid, "Withdraw", {"amount": 20}, expected_version=2)
        ledger = await ef.transactions(sid, wait_for=spent.position)
        assert [(t.type, t.amount, t.balance_after) for t in ledger.items][-2:] == [
            ("deposit", 70, 70),
            ("withdrawal", 20, 50),
        ]
        page = await ef.accounts(owner="Kim", wait_for=spent.position)
        assert [a.id for a in page.items] == [sid]
        assert (await ef.stream("account", sid)).state["balance"] == 50
        with pytest.raises(ProblemError) as err:
            await ef.send("account", sid, "Withdraw", {"amount": 1000})
        assert (err.value.status, err.value.code) == (422, "insufficient_funds")
        with pytest.raises(ProblemError) as err:
            await ef.send("account", sid, "Deposit", {"amount": 1}, expected_version=1)
        assert (err.value.code, err.value.body["current_version"]) == ("version_conflict", 3)
        deposit = {"stream_type": "account", "stream_id": sid, "type": "Deposit", "data": {"amount": 5}}
        many = await ef.send_many([deposit, {**deposit, "type": "Withdraw", "data": {"amount": 1000}}])
        assert isinstance(many[0], CommandResult) and many[0].version == 4
        assert isinstance(many[1], ProblemError) and (many[1].status, many[1].code) == (
            422,
            "insufficient_funds",
        )
    async with EventfoldClient(commands.url, queries.url, token="efk_client_wrong") as bad:
        with pytest.raises(ProblemError) as err:
            await bad.account(sid)
        assert err.value.status == 401
