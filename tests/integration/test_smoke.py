from __future__ import annotations

from eventfold.settings import DatabaseSettings
from tests.helpers import first_versions, read_topic, uid


async def test_open_and_deposit_land_in_topic(command_client, make_settings, db: DatabaseSettings) -> None:
    settings = make_settings(db)
    sid = uid("acct")
    async with command_client(settings) as http:
        r = await http.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "A"}})
        assert r.status_code == 200, r.text
        r = await http.post(f"/commands/account/{sid}", json={"type": "Deposit", "data": {"amount": 5}})
        assert r.status_code == 200, r.text
    records = await read_topic(settings.kafka, settings.kafka.topic("account"))
    assert first_versions(records, sid) == [1, 2]
