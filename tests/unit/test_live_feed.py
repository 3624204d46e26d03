"""The change feed's bookkeeping: cursors, what a subscriber is sent, and the mailbox limit."""

from __future__ import annotations

import orjson
import pytest

from eventfold.problems import Problem
from projector.tables import CHANGE_SLOTS
from query_api.feed import Mailbox, Subscriber, changes_in, cursor_token, end_of, matches, parse_cursor


def doc(version: int, **fields: object) -> dict[str, object]:
    return {"id": "a", "version": version, **fields}


def test_a_cursor_names_its_projection_and_position() -> None:
    token = cursor_token("accounts", 42)
    assert parse_cursor("accounts", token) == 42
    with pytest.raises(Problem) as other:
        parse_cursor("transfers", token)
    assert other.value.status == 400 and other.value.code == "invalid_live_cursor"
    for bad in ("", "not-a-token", cursor_token("accounts", -1)):
        with pytest.raises(Problem):
            parse_cursor("accounts", bad)


def test_each_document_of_a_feed_row_has_its_own_position_between_the_rows_ends() -> None:
    row = orjson.dumps([["a", 3], ["b", 1], ["c", 7]]).decode()
    base = 5 * CHANGE_SLOTS
    assert list(changes_in(5, row, end_of(4))) == [(base, "a", 3), (base + 1, "b", 1), (base + 2, "c", 7)]
    # Resuming inside the row: only what comes after the position given.
    assert list(changes_in(5, row, base)) == [(base + 1, "b", 1), (base + 2, "c", 7)]
    assert list(changes_in(5, row, base, "c")) == [(base + 2, "c", 7)]
    assert list(changes_in(5, row, base, "x")) == []
    quoted = orjson.dumps([['say "hi"', 1], ["é/ü", 2]]).decode()
    assert list(changes_in(5, quoted, end_of(4), "é/ü")) == [(base + 1, "é/ü", 2)]
    assert list(changes_in(5, quoted, end_of(4), 'say "hi"')) == [(base, 'say "hi"', 1)]
    assert list(changes_in(5, row, end_of(5))) == []
    assert end_of(4) < base and base + CHANGE_SLOTS - 1 == end_of(5)


def test_a_document_subscriber_gets_each_state_once_in_order() -> None:
    box = Mailbox(10)
    sub = Subscriber("accounts/a", "accounts", box, doc_id="a", cursor=5, version=2)
    sub.changed(5, "a", doc(3))  # at the cursor: already sent
    sub.changed(6, "a", doc(2))  # a state it already has
    sub.changed(7, "a", doc(4))
    sub.changed(7, "a", doc(4))  # the same change again (catch-up overlapping the tail)
    sub.changed(9, "a", doc(5))
    assert [(e.kind, e.seq, e.document["version"]) for e in box.events if e.document] == [
        ("change", 7, 4),
        ("change", 9, 5),
    ]
    assert sub.cursor == 9


def test_a_filtered_subscriber_hears_of_documents_that_stop_matching() -> None:
    box = Mailbox(10)
    sub = Subscriber("books?lent_to=ann", "books", box, filters={"lent_to": "ann"})
    sub.changed(1, "b1", {"id": "b1", "version": 1, "lent_to": "ann"})
    sub.changed(2, "b2", {"id": "b2", "version": 1, "lent_to": "bob"})  # never matched: nothing
    sub.changed(3, "b1", {"id": "b1", "version": 2, "lent_to": None})
    assert [(e.kind, e.doc_id) for e in box.events] == [("change", "b1"), ("removed", "b1")]


def test_a_full_mailbox_closes_with_the_reason_and_takes_no_more() -> None:
    box = Mailbox(2)
    sub = Subscriber("accounts/a", "accounts", box, doc_id="a")
    for v in (1, 2, 3):
        sub.changed(v, "a", doc(v))
    assert box.closed is not None and box.closed.startswith("slow consumer")
    assert not box.events  # what it held is dropped with it
    sub.changed(4, "a", doc(4))
    assert not box.events


def test_filters_compare_timestamps_in_utc() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    at = datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert matches({"at": at.astimezone(timezone(timedelta(hours=2)))}, {"at": at})
    assert matches({"at": at.replace(tzinfo=None)}, {"at": at})
    assert not matches({"owner": "ann"}, {"owner": "bob"})
