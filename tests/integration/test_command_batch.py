"""`POST /commands`: many commands in one request, with the real broker and both store backends."""

from __future__ import annotations

from typing import Any

from eventfold.settings import DatabaseSettings
from tests.helpers import read_topic, uid


def item(stream_id: str, type_: str, data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"stream_type": "account", "stream_id": stream_id, "type": type_, "data": data or {}, **extra}


async def test_a_batch_answers_each_command_in_order_and_keeps_each_streams_order(
    command_client, make_settings, db: DatabaseSettings
) -> None:
    settings = make_settings(db)
    ann, bob = uid("ann"), uid("bob")
    commands = [
        item(ann, "OpenAccount", {"owner": "Ann"}),
        item(bob, "OpenAccount", {"owner": "Bob"}),
        item(ann, "Deposit", {"amount": 100}),
        item(bob, "Withdraw", {"amount": 5}),  # refused by the aggregate: no money
        item(ann, "Withdraw", {"amount": 30}),
        item("not a stream id", "Deposit", {"amount": 1}),  # refused before deciding
        {**item(ann, "Deposit", {"amount": 1}), "stream_type": "nothing"},
        item(ann, "Deposit", {"amount": 7}, expected_version=1),  # ann is at 3 by then
        item(bob, "Deposit", {"amount": "lots"}),
        item(ann, "Deposit", {"amount": 7}, expected_version=3),
    ]
    async with command_client(settings) as http:
        r = await http.post("/commands", json={"commands": commands})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        statuses = [x["status"] for x in results]
        assert statuses == [200, 200, 200, 422, 200, 422, 404, 409, 422, 200]
        assert [x["result"]["version"] for x in results if x["status"] == 200] == [1, 1, 2, 3, 4]
        assert results[3]["problem"]["code"] == "insufficient_funds"
        assert results[5]["problem"]["code"] == "invalid_command"
        assert results[5]["problem"]["instance"] == "/commands#/commands/5"
        assert results[6]["problem"]["code"] == "unknown_stream_type"
        assert results[7]["problem"]["current_version"] == 3
        assert results[8]["problem"]["code"] == "invalid_command_data"
        assert all(x["result"]["published"] for x in results if x["status"] == 200)
        state = (await http.get(f"/streams/account/{ann}")).json()
        assert state["version"] == 4 and state["state"]["balance"] == 77
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    ann_events = [r.envelope() for r in records if r.key == ann.encode()]
    assert [(e.type, e.data.get("amount")) for e in ann_events] == [
        ("AccountOpened", None),
        ("Deposited", 100),
        ("Withdrawn", 30),
        ("Deposited", 7),
    ]
    assert [e.type for e in (r.envelope() for r in records if r.key == bob.encode())] == ["AccountOpened"]


async def test_an_idempotency_key_is_the_same_whether_sent_alone_or_in_a_batch(
    command_client, make_settings
) -> None:
    sid = uid("acct")
    async with command_client(make_settings()) as http:
        opened = await http.post(
            "/commands",
            json={"commands": [item(sid, "OpenAccount", {"owner": "Ann"}, idempotency_key=f"{sid}-o")]},
        )
        first = opened.json()["results"][0]
        assert first["status"] == 200 and "replayed" not in first
        alone = await http.post(
            f"/commands/account/{sid}",
            json={"type": "OpenAccount", "data": {"owner": "Ann"}},
            headers={"Idempotency-Key": f"{sid}-o"},
        )
        assert alone.status_code == 200 and alone.headers["idempotent-replayed"] == "true"
        assert alone.json() == first["result"]
        deposit = {"type": "Deposit", "data": {"amount": 5}}
        sent = await http.post(
            f"/commands/account/{sid}", json=deposit, headers={"Idempotency-Key": f"{sid}-d"}
        )
        assert sent.status_code == 200
        again = await http.post(
            "/commands",
            json={"commands": [item(sid, "Deposit", {"amount": 5}, idempotency_key=f"{sid}-d")] * 2},
        )
        assert [x.get("replayed") for x in again.json()["results"]] == [True, True]
        assert [x["result"] for x in again.json()["results"]] == [sent.json()] * 2
        reused = await http.post(
            "/commands", json={"commands": [item(sid, "Deposit", {"amount": 6}, idempotency_key=f"{sid}-d")]}
        )
        assert reused.json()["results"][0]["status"] == 422
        # A key no header could carry is refused with its item; the rest of the batch goes on.
        odd = await http.post(
            "/commands",
            json={
                "commands": [
                    item(sid, "Deposit", {"amount": 1}, idempotency_key="a\x00b"),
                    item(sid, "Deposit"),
                ]
            },
        )
        assert [x["status"] for x in odd.json()["results"]] == [422, 422]
        assert odd.json()["results"][0]["problem"]["code"] == "invalid_command"
        assert odd.json()["results"][1]["problem"]["code"] == "invalid_command_data"
        state = (await http.get(f"/streams/account/{sid}")).json()
        assert state["version"] == 2 and state["state"]["balance"] == 5


async def test_a_request_that_is_not_a_batch_is_refused_whole(command_client, make_settings) -> None:
    sid = uid("acct")
    settings = make_settings(command_api={"command_batch_max": 3, "command_batch_max_body_bytes": 200_000})
    async with command_client(settings) as http:
        cases = [
            (b"{not json", 400, "malformed_json"),
            (b"[]", 422, "invalid_batch"),
            (b'{"commands": {}}', 422, "invalid_batch"),
            (b'{"commands": []}', 422, "invalid_batch"),
        ]
        for body, status, code in cases:
            r = await http.post("/commands", content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["code"]) == (status, code), body
            assert r.headers["content-type"] == "application/problem+json"
        four = [item(sid, "OpenAccount", {"owner": "Ann"})] + [item(sid, "Deposit", {"amount": 1})] * 3
        r = await http.post("/commands", json={"commands": four})
        assert (r.status_code, r.json()["code"]) == (413, "too_many_commands")
        assert (await http.get(f"/streams/account/{sid}")).status_code == 404
        # The batch path has a body limit of its own; a single command keeps the small one.
        # An item's keys besides its own are ignored, as a single command's body's are.
        padded = {**item(sid, "OpenAccount", {"owner": "Ann"}), "note": "x" * 100_000}
        r = await http.post("/commands", json={"commands": [padded]})
        assert r.status_code == 200 and r.json()["results"][0]["status"] == 200, r.text
        single = {"type": "Deposit", "data": {"amount": 1}, "note": "x" * 100_000}
        r = await http.post(f"/commands/account/{sid}", json=single)
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
        r = await http.post("/commands", json={"commands": [{**padded, "note": "x" * 200_000}]})
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
        assert (await http.get(f"/streams/account/{sid}")).json()["version"] == 1
