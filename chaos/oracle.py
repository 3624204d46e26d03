"""The oracle: what must hold after any mix of faults, checked against the topic.

The topic is the truth. Each check returns violations as short sentences,
grouped by check name; a clean run has none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.driver import CommandRecord
from chaos.topic import TopicRecord
from eventfold.rss import Judgement

Docs = dict[str, dict[str, Any]]
Ledger = list[tuple[Any, ...]]

CHECKS = (
    "acknowledged_in_topic",
    "versions_in_order",
    "read_model_equals_fold",
    "no_negative_balance",
    "balances_match_acknowledged",
    "refused_appended_nothing",
    "write_heads_in_topic",
    "idempotent_repeats",
    "every_command_answered",
    "no_server_errors",
    "memory_flat_under_load",
)
_SHOWN = 20  # violations listed per check; the rest are counted


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECKS})
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    events_checked: int = 0
    streams_checked: int = 0

    def add(self, check: str, message: str) -> None:
        self.counts[check] += 1
        if len(self.violations[check]) < _SHOWN:
            self.violations[check].append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Fold:
    docs: Docs
    ledger: Ledger
    negative: list[str]


def fold(records: list[TopicRecord]) -> Fold:
    """The read model a correct projector makes: first occurrence of each version."""
    docs: Docs = {}
    ledger: Ledger = []
    negative: list[str] = []
    for r in records:
        env = r.envelope
        doc = docs.get(env.stream_id)
        if env.version != (doc["version"] if doc else 0) + 1:
            continue
        if env.type == "AccountOpened":
            doc = {"owner": env.data["owner"], "balance": 0, "status": "open"}
        elif doc is None:
            continue  # cannot happen after a v1 AccountOpened; keeps the fold total
        elif env.type in ("Deposited", "Withdrawn"):
            sign = 1 if env.type == "Deposited" else -1
            doc = {**doc, "balance": doc["balance"] + sign * env.data["amount"]}
            ledger.append(
                (
                    env.stream_id,
                    env.version,
                    "deposit" if sign > 0 else "withdrawal",
                    env.data["amount"],
                    doc["balance"],
                )
            )
            if doc["balance"] < 0:
                negative.append(f"{env.stream_id} v{env.version}: balance {doc['balance']}")
        elif env.type == "AccountClosed":
            doc = {**doc, "status": "closed"}
        doc["version"] = env.version
        docs[env.stream_id] = doc
    return Fold(docs, sorted(ledger), negative)


def check(
    commands: list[CommandRecord],
    records: list[TopicRecord],
    tables: tuple[Docs, Ledger],
    heads: dict[str, int],
    server_errors: list[tuple[str, int, str]],
    memory: Sequence[Judgement] = (),
) -> Verdict:
    v = Verdict(events_checked=len(records))
    by_event_id = {str(r.envelope.event_id) for r in records}
    correlations = {r.envelope.correlation_id for r in records}

    # 1. acknowledged commands have their events in the topic
    for c in commands:
        if c.acknowledged and c.body is not None:
            for e in c.body.get("events", []):
                if e["event_id"] not in by_event_id:
                    status = c.final.status if c.final else "?"
                    v.add(
                        "acknowledged_in_topic",
                        f"{c.key} {c.type} {c.stream_id} v{e['version']} ({status}):"
                        f" event {e['event_id']} missing",
                    )

    # 2. per stream, first occurrences are 1, 2, 3, ... in partition order
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: dict[str, set[int]] = defaultdict(set)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in records:
        sid, ver = r.envelope.stream_id, r.envelope.version
        partitions[sid].add(r.partition)
        if ver not in seen[sid]:
            seen[sid].add(ver)
            firsts[sid].append(ver)
    v.streams_checked = len(firsts)
    for sid, versions in firsts.items():
        if versions != list(range(1, len(versions) + 1)):
            v.add("versions_in_order", f"{sid}: first occurrences {_abbrev(versions)}")
        if len(partitions[sid]) > 1:
            v.add("versions_in_order", f"{sid}: spread over partitions {sorted(partitions[sid])}")

    # 3. and 4. the read tables are the fold; no balance ever negative
    expected = fold(records)
    docs, ledger = tables
    for sid in sorted(set(docs) | set(expected.docs)):
        if docs.get(sid) != expected.docs.get(sid):
            v.add("read_model_equals_fold", f"{sid}: read {docs.get(sid)} != fold {expected.docs.get(sid)}")
    if ledger != expected.ledger:
        extra = sorted(set(ledger) - set(expected.ledger))[:5]
        missing = sorted(set(expected.ledger) - set(ledger))[:5]
        v.add("read_model_equals_fold", f"ledger differs: extra {extra}, missing {missing}")
    for n in expected.negative:
        v.add("no_negative_balance", n)

    # 5. money: the fold's balances are what acknowledged commands moved
    moved = 0
    for c in commands:
        if c.acknowledged and c.repeat is None and c.type in ("Deposit", "Withdraw"):
            moved += c.data["amount"] if c.type == "Deposit" else -c.data["amount"]
    total = sum(d["balance"] for d in expected.docs.values())
    if total != moved:
        v.add("balances_match_acknowledged", f"sum of balances {total} != acknowledged movements {moved}")

    # 6. an attempt answered 4xx or 503 appended nothing
    for c in commands:
        for a in c.attempts:
            refused = a.status is not None and (400 <= a.status < 500 or a.status == 503)
            if refused and a.correlation_id in correlations:
                v.add(
                    "refused_appended_nothing",
                    f"{a.correlation_id} ({c.type} {c.stream_id}) answered {a.status} {a.code}"
                    " but has events in the topic",
                )

    # 7. every head the write store committed reached the topic
    for sid, version in heads.items():
        have = len(firsts.get(sid, []))
        if have != version:
            v.add("write_heads_in_topic", f"{sid}: write store at v{version}, topic has v1..v{have}")

    # 8. a repeated key gives the first answer (same body) or a refusal (another body)
    for c in commands:
        if c.repeat_of is None or c.final is None:
            continue
        first = c.repeat_of.body or {}
        if c.repeat == "replay":
            got = (c.body or {}).get("events") if c.acknowledged else f"{c.final.status} {c.final.code}"
            if got != first.get("events"):
                v.add("idempotent_repeats", f"{c.key} replayed: {got} != first {first.get('events')}")
        elif (c.final.status, c.final.code) != (422, "idempotency_key_reused"):
            v.add("idempotent_repeats", f"{c.key} reused with another body: {c.final.status} {c.final.code}")

    # 9. every command has a definite answer; 10. no 5xx other than 503
    for c in commands:
        if c.final is None or not 200 <= (c.final.status or 0) < 500:
            v.add("every_command_answered", f"{c.key} {c.type} {c.stream_id}: {c.attempts[-3:]}")
    for cid, status, text in server_errors:
        v.add("no_server_errors", f"{cid}: {status} {text[:200]}")

    # 11. no service process grew by more than the limit after warm-up (a leak)
    for j in memory:
        if j.grew:
            v.add("memory_flat_under_load", j.sentence())
    return v


def _abbrev(versions: list[int]) -> str:
    for i, ver in enumerate(versions):
        if ver != i + 1:
            return f"... {versions[max(0, i - 3) : i + 3]} (expected {i + 1} at position {i})"
    return str(versions[:10])
