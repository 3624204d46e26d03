"""The read side through HTTP: a scripted session, read-your-writes, pagination."""

from __future__ import annotations

import random
from typing import Any

from eventfold.settings import DatabaseSettings
from tests.helpers import read_topic, uid, wait_until
from tests.support.projection import (
    caught_up,
    fast_projector,
    fold_accounts,
    query_client,
    read_tables,
    running_projector,
)


async def _send(http: Any, sid: str, type_: str, data: dict[str, Any] | None = None) -> str:
    r = await http.post(f"/commands/account/{sid}", json={"type": type_, "data": data or {}})
    assert r.status_code == 200, r.text
    return str(r.json()["position"])


async def test_scripted_session_reads_your_writes_and_matches_the_fold(
    command_client, make_settings, own_db: DatabaseSettings
) -> None:
    settings = make_settings(own_db, projector=fast_projector())
    rng = random.Random(7)
    owners = [uid("owner") for _ in range(3)]
    ids = sorted(uid("acct") for _ in range(12))
    expected: dict[str, dict[str, Any]] = {}
    async with (
        command_client(settings) as cmd,
        running_projector(settings),
        query_client(settings) as q,
    ):
        for sid in ids:
            owner = rng.choice(owners)
            steps: list[tuple[str, dict[str, Any]]] = [("OpenAccount", {"owner": owner})]
            balance = 0
            for _ in range(rng.randint(1, 4)):
                amount = rng.randint(1, 500)
                steps.append(("Deposit", {"amount": amount, "reference": uid("ref")}))
                balance += amount
            if rng.random() < 0.5:
                steps.append(("Withdraw", {"amount": rng.randint(1, balance)}))
            if rng.random() < 0.4:
                steps += [("Withdraw", {"amount": -1}), ("CloseAccount", {})]
            balance = 0
            status = "open"
            for type_, data in steps:
                if type_ == "Withdraw" and data["amount"] == -1:
                    data = {"amount": balance}
                    if balance == 0:
                        continue
                pos = await _send(cmd, sid, type_, data)
                balance += data.get("amount", 0) * (-1 if type_ == "Withdraw" else 1)
                status = "closed" if type_ == "CloseAccount" else status
                # Read-your-writes: the first query after the command sees it.
                r = await q.get(f"/accounts/{sid}", params={"wait_for": pos})
                assert r.status_code == 200, r.text
                body = r.json()
                assert (body["balance"], body["status"], body["owner"]) == (balance, status, owner)
                assert r.headers["etag"] == f'"{body["version"]}"'
            expected[sid] = {"owner": owner, "balance": balance, "status": status}

        topic = settings.kafka.topic("account")
        records = await read_topic(settings.kafka, topic)
        await wait_until(lambda: caught_up(own_db.read_db_url, records, topic), what="caught up")
        docs, ledger = fold_accounts(records)
        assert await read_tables(own_db.read_db_url) == (docs, ledger)
        assert {k: {f: v[f] for f in ("owner", "balance", "status")} for k, v in docs.items()} == expected

        # Pagination returns every row exactly once, in id order.
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 5}
            if cursor:
                params["cursor"] = cursor
            page = (await q.get("/accounts", params=params)).json()
            seen += [a["id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids

        for owner in owners:
            r = await q.get("/accounts", params={"owner": owner, "limit": 500})
            assert [a["id"] for a in r.json()["items"]] == sorted(
                k for k, v in expected.items() if v["owner"] == owner
            )
        r = await q.get("/accounts", params={"status": "closed", "limit": 500})
        assert [a["id"] for a in r.json()["items"]] == sorted(
            k for k, v in expected.items() if v["status"] == "closed"
        )

        sid = max(ids, key=lambda i: sum(1 for x in ledger if x[0] == i))
        mine = [x for x in ledger if x[0] == sid]
        got: list[tuple[Any, ...]] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await q.get(f"/accounts/{sid}/transactions", params=params)).json()
            got += [
                (t["account_id"], t["version"], t["type"], t["amount"], t["balance_after"], t["reference"])
                for t in page["items"]
            ]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert got == mine
