"""Re-driving recorded failures (`eventfold dlq`), and v1 records replaying."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from rich.console import Console

from eventfold.cli.dlq import run_list, run_retry
from eventfold.db import create_engine
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import DatabaseSettings
from examples.bank.contracts import ACCOUNT
from examples.bank.projection import ACCOUNTS
from projector.redrive import list_failures, retry
from projector.replay import replay_projection
from tests.helpers import read_topic, wait_until
from tests.support.bank import bank
from tests.support.projection import (
    account_events,
    caught_up,
    fast_projector,
    fold_accounts,
    produce_envelopes,
    read_tables,
    running_projector,
)

# The accounts projection as deployed before the v1 -> v2 upcasters existed.
WITHOUT_UPCASTERS = dataclasses.replace(ACCOUNTS, contract=dataclasses.replace(ACCOUNT, upcasters={}))


async def _setup(make_settings: Any, db: DatabaseSettings) -> Any:
    settings = make_settings(db, projector=fast_projector())
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    return settings, topic


async def _project(settings: Any, topic: str, projection: Any) -> list[Any]:
    async with running_projector(settings, [projection]):
        records = await read_topic(settings.kafka, topic)
        await wait_until(
            lambda: caught_up(settings.db.read_db_url, records, topic), timeout=30, what="projector"
        )
    return records


def _then(events: list[Any], version: int, type_: str) -> list[Any]:
    """One more event of `type_` at `version` for every stream of `events`."""
    last = {e.stream_id: e for e in events}
    return [e.model_copy(update={"version": version, "type": type_, "data": {}}) for e in last.values()]


async def test_retry_applies_failures_once_the_upcaster_exists(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings, topic = await _setup(make_settings, own_db)
    events = account_events(3, 5, seed=31)  # money movements in the v1 shape
    closing = _then(events, 6, "AccountClosed")  # decodes fine, but follows the poison
    await produce_envelopes(settings.kafka, topic, events + closing)
    records = await _project(settings, topic, WITHOUT_UPCASTERS)
    engine = create_engine(own_db.read_db_url)
    try:
        failures = await list_failures(engine, "accounts")
        reasons = [f["reason"] for f in failures]
        assert reasons.count("unknown_type") == len(events) - 3  # every v1 money movement
        assert reasons.count("version_gap") == 3  # each stream's close waits behind them
        docs, _ = await read_tables(own_db.read_db_url)
        assert all(d["version"] == 1 for d in docs.values())

        # Without the fix, a retry changes nothing and the reasons stay.
        again = await retry(engine, WITHOUT_UPCASTERS)
        assert (again.retried, again.applied, again.still_failing) == (len(failures), 0, len(failures))
        assert [(f["id"], f["reason"]) for f in await list_failures(engine)] == [
            (f["id"], f["reason"]) for f in failures
        ]

        # The fix deployed: retrying the poison records applies them in stream order ...
        poison = [f["id"] for f in failures if f["reason"] == "unknown_type"]
        first = await retry(engine, ACCOUNTS, poison)
        assert first.applied == len(poison) and first.still_failing == 0
        docs, _ = await read_tables(own_db.read_db_url)
        assert all(d["version"] == 5 for d in docs.values())
    finally:
        await engine.dispose()

    # ... and `dlq retry --all` catches the streams up through the recorded gaps.
    out = io.StringIO()
    await run_retry(settings, bank, None, None, console=Console(file=out, width=200))
    assert "applied 3" in out.getvalue() and "still failing 0" in out.getvalue()
    assert await read_tables(own_db.read_db_url) == fold_accounts(records)

    # The streams go on live as if nothing had failed.
    await produce_envelopes(settings.kafka, topic, _then(events, 7, "AccountClosed"))
    records = await _project(settings, topic, ACCOUNTS)
    assert await read_tables(own_db.read_db_url) == fold_accounts(records)
    listing = io.StringIO()
    assert await run_list(settings, bank, "accounts", console=Console(file=listing, width=200)) == 0


async def test_a_record_that_still_fails_keeps_its_new_reason(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings, topic = await _setup(make_settings, own_db)
    events = account_events(1, 2, seed=32)
    await produce_envelopes(settings.kafka, topic, events)
    await _project(settings, topic, WITHOUT_UPCASTERS)
    # A "fix" that swaps one cause for another: the upcaster now produces bad data.
    bad = dataclasses.replace(
        ACCOUNTS,
        contract=dataclasses.replace(ACCOUNT, upcasters={**ACCOUNT.upcasters, ("Deposited", 1): lambda d: d}),
    )
    engine = create_engine(own_db.read_db_url)
    try:
        (before,) = await list_failures(engine)
        result = await retry(engine, bad, [before["id"]])
        (after,) = await list_failures(engine)
    finally:
        await engine.dispose()
    assert result.still_failing == 1
    assert (before["reason"], after["reason"]) == ("unknown_type", "invalid_data")
    assert after["id"] == before["id"] and "reference" in after["detail"]


async def test_v1_money_movements_replay_with_an_empty_reference(
    make_settings, own_db: DatabaseSettings
) -> None:
    settings, topic = await _setup(make_settings, own_db)
    events = account_events(4, 6, seed=33)
    assert {e.schema_version for e in events if e.type in ("Deposited", "Withdrawn")} == {1}
    assert all(set(e.data) == {"amount"} for e in events if e.type in ("Deposited", "Withdrawn"))
    await produce_envelopes(settings.kafka, topic, events)
    records = await read_topic(settings.kafka, topic)
    engine = create_engine(own_db.read_db_url)
    try:
        result = await replay_projection(settings, ACCOUNTS, engine)
    finally:
        await engine.dispose()
    assert result.applied == len(events) and result.failures == 0
    docs, ledger = await read_tables(own_db.read_db_url)
    assert (docs, ledger) == fold_accounts(records)
    assert ledger and {row[-1] for row in ledger} == {""}
