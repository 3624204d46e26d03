"""The projection a rebuild writes with: the same handlers, a generation's tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from examples.bank.projection import ACCOUNTS
from projector.batch import Decoded, fold
from projector.rebuild import generation_projection
from schemas.envelope import EventEnvelope


def _decoded(version: int, type_: str, data: dict[str, object]) -> Decoded:
    env = EventEnvelope(
        event_id=uuid.uuid4(),
        stream_type="account",
        stream_id="a-1",
        version=version,
        type=type_,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        data=data,
    )
    event = ACCOUNTS.contract.load_event(env.type, env.schema_version, env.data)
    return Decoded("t", 0, version - 1, env, event)


def test_appends_land_in_the_generations_child_tables() -> None:
    g2 = generation_projection(ACCOUNTS, 2)
    assert g2.name == "accounts@g2"
    assert [t.name for t in g2.tables] == ["accounts__g2", "account_transactions__g2"]
    items = [_decoded(1, "AccountOpened", {"owner": "o"}), _decoded(2, "Deposited", {"amount": 5})]
    folded = fold(g2, {}, items)
    assert set(folded.appends) == {"account_transactions__g2"}
    assert folded.docs["a-1"]["balance"] == 5
    assert fold(ACCOUNTS, {}, items).docs == folded.docs
