"""The oracle: what must hold after any mix of faults, checked against the topic.

The topic is the truth. Each check returns violations as short sentences,
grouped by check name; a clean run has none.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.driver import CommandRecord
from chaos.topic import TopicRecord
from eventfold.rss import Judgement
from examples.bank.welcome import WELCOME_EMAIL

Docs = dict[str, dict[str, Any]]
Ledger = list[tuple[Any, ...]]

CHECKS = (
    "acknowledged_in_topic",
    "transfer_ended_in_time",
    "transfer_moved_money_once",
    "command_decided_once",
    "transfers_read_model",
    "no_stuck_transfer",
    "welcome_email_sent",
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


@dataclass(frozen=True)
class Saga:
    """What the transfer checks need besides the topics."""

    transfers: list[str]  # every transfer id the driver had acknowledged
    read_status: dict[str, str]  # the transfers read model's status per id
    stuck: dict[str, str]  # stuck saga instances and their reason
    mails: Counter[str]  # mails received per reactor key
    deadline_s: float
    bound_s: float
    # (start, end) epoch seconds of broker and database outages the faults caused.
    outages: list[tuple[float, float]] = field(default_factory=list)


def welcome_key(event_id: Any) -> str:
    """The welcome reactor's key for an AccountOpened event: its mail's Message-ID."""
    return WELCOME_EMAIL.key(event_id)


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECKS})
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    events_checked: int = 0
    streams_checked: int = 0
    transfers: dict[str, int] = field(default_factory=dict)  # by outcome
    transfer_seconds: dict[str, float] = field(default_factory=dict)  # request to ending: p50, p99, max
    emails: dict[str, int] = field(default_factory=dict)  # owed, sent, duplicates

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
    heads: dict[tuple[str, str], int],
    server_errors: list[tuple[str, int, str]],
    memory: Sequence[Judgement] = (),
    *,
    saga: Saga | None = None,
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
    firsts: dict[tuple[str, str], list[int]] = defaultdict(list)
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    partitions: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        sid, ver = (r.envelope.stream_type, r.envelope.stream_id), r.envelope.version
        partitions[sid].add(r.partition)
        if ver not in seen[sid]:
            seen[sid].add(ver)
            firsts[sid].append(ver)
    v.streams_checked = len(firsts)
    for sid, versions in firsts.items():
        if versions != list(range(1, len(versions) + 1)):
            v.add("versions_in_order", f"{sid[0]}/{sid[1]}: first occurrences {_abbrev(versions)}")
        if len(partitions[sid]) > 1:
            v.add("versions_in_order", f"{sid[0]}/{sid[1]}: spread over partitions {sorted(partitions[sid])}")

    # 3. and 4. the read tables are the fold; no balance ever negative
    expected = fold([r for r in records if r.envelope.stream_type == "account"])
    docs, ledger = tables
    for aid in sorted(set(docs) | set(expected.docs)):
        if docs.get(aid) != expected.docs.get(aid):
            v.add("read_model_equals_fold", f"{aid}: read {docs.get(aid)} != fold {expected.docs.get(aid)}")
    if ledger != expected.ledger:
        extra = sorted(set(ledger) - set(expected.ledger))[:5]
        missing = sorted(set(expected.ledger) - set(ledger))[:5]
        v.add("read_model_equals_fold", f"ledger differs: extra {extra}, missing {missing}")
    for n in expected.negative:
        v.add("no_negative_balance", n)

    # 5. money: the fold's balances are what acknowledged commands moved
    moved = 0
    for c in commands:
        if (
            c.acknowledged
            and c.repeat is None
            and c.stream_type == "account"
            and c.type in ("Deposit", "Withdraw")
        ):
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
            v.add(
                "write_heads_in_topic", f"{sid[0]}/{sid[1]}: write store at v{version}, topic has v1..v{have}"
            )

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
    # 12. every command (by the id derived from its key) was decided once
    check_decided_once(records, v)
    if saga is not None:
        check_transfers(records, saga, v)
        check_welcome_emails(records, saga, v)
    return v


def _distinct(records: list[TopicRecord]) -> list[TopicRecord]:
    """Each event once (a publisher's retry can write one twice), in topic order."""
    seen: set[str] = set()
    out: list[TopicRecord] = []
    for r in records:
        eid = str(r.envelope.event_id)
        if eid not in seen:
            seen.add(eid)
            out.append(r)
    return out


def check_decided_once(records: list[TopicRecord], v: Verdict) -> None:
    """A command's events are one decision: one stream, consecutive versions.

    A process manager's command has an id derived from its idempotency key (its
    events' `causation_id`), so a command decided twice, by a resend the write
    store failed to recognise, shows as one causation on two decisions.
    """
    by_cause: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for r in _distinct(records):
        env = r.envelope
        if env.causation_id:
            by_cause[env.causation_id].append((env.stream_type, env.stream_id, env.version))
    for cause, events in by_cause.items():
        streams = {(t, s) for t, s, _ in events}
        versions = sorted(ver for _, _, ver in events)
        if len(streams) > 1 or versions != list(range(versions[0], versions[0] + len(versions))):
            v.add("command_decided_once", f"command {cause}: events {sorted(events)[:6]}")


_ENDINGS = {
    "TransferCompleted": "completed",
    "TransferFailed": "failed",
    "TransferCompensated": "compensated",
}
# Movements of a transfer's money by outcome: (withdrawn from the source,
# deposited to the target, refunded to the source).
_MOVEMENTS = {"completed": (1, 1, 0), "failed": (0, 0, 0), "compensated": (1, 0, 1)}


def overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by the union of `spans`."""
    total, reach = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


def check_transfers(records: list[TopicRecord], saga: Saga, v: Verdict) -> None:
    """Every transfer ended in time, moved its money exactly as its outcome says, once."""
    requested: dict[str, TopicRecord] = {}
    endings: dict[str, list[TopicRecord]] = defaultdict(list)
    moves: dict[str, Counter[str]] = defaultdict(Counter)
    for r in _distinct(records):
        env = r.envelope
        if env.stream_type == "transfer":
            if env.type == "TransferRequested":
                requested[env.stream_id] = r
            elif env.type in _ENDINGS:
                endings[env.stream_id].append(r)
        elif env.type in ("Withdrawn", "Deposited") and env.data.get("reference"):
            moves[env.data["reference"]][f"{env.type}:{env.stream_id}"] += 1
    outcomes: Counter[str] = Counter()
    took_s: list[float] = []
    limit = saga.deadline_s + saga.bound_s
    for tid in saga.transfers:
        req = requested.get(tid)
        ends = endings.get(tid, [])
        if req is None or len(ends) != 1:
            outcomes["not ended" if req is not None else "not requested"] += 1
            why = saga.stuck.get(tid, "")
            v.add(
                "transfer_ended_in_time", f"{tid}: {len(ends)} endings" + (f" (stuck: {why})" if why else "")
            )
            continue
        outcome = _ENDINGS[ends[0].envelope.type]
        outcomes[outcome] += 1
        began, ended = req.envelope.occurred_at.timestamp(), ends[0].envelope.occurred_at.timestamp()
        took = ended - began
        took_s.append(took)
        # Time the broker or the database was down does not count against a transfer.
        down = overlap(saga.outages, began, ended)
        if took - down > limit:
            v.add(
                "transfer_ended_in_time",
                f"{tid}: {outcome} after {took:.1f}s, {down:.1f}s of it in outages (limit {limit:g}s)",
            )
        source, target = req.envelope.data["source"], req.envelope.data["target"]
        m = moves.get(tid, Counter())
        got = (m[f"Withdrawn:{source}"], m[f"Deposited:{target}"], m[f"Deposited:{source}"])
        if got != _MOVEMENTS[outcome] or sum(m.values()) != sum(got):
            v.add("transfer_moved_money_once", f"{tid} {outcome}: movements {dict(m)}")
        if saga.read_status.get(tid) != outcome:
            v.add(
                "transfers_read_model", f"{tid}: read model {saga.read_status.get(tid)!r}, topic {outcome!r}"
            )
    for tid, why in sorted(saga.stuck.items()):
        v.add("no_stuck_transfer", f"{tid}: {why[:200]}")
    v.transfers = dict(sorted(outcomes.items()))
    if took_s:
        took_s.sort()
        v.transfer_seconds = {
            "p50": round(took_s[len(took_s) // 2], 2),
            "p99": round(took_s[min(len(took_s) - 1, int(len(took_s) * 0.99))], 2),
            "max": round(took_s[-1], 2),
        }


def check_welcome_emails(records: list[TopicRecord], saga: Saga, v: Verdict) -> None:
    """Every account opened got its welcome mail at least once; repeats are counted, not faults."""
    owed = {
        welcome_key(r.envelope.event_id): r.envelope.stream_id
        for r in _distinct(records)
        if r.envelope.type == "AccountOpened"
    }
    for key, account in owed.items():
        if saga.mails[key] < 1:
            v.add("welcome_email_sent", f"{account}: no welcome mail (key {key})")
    sent = sum(saga.mails.values())
    v.emails = {
        "owed": len(owed),
        "received": sent,
        "distinct": len(set(saga.mails) & set(owed)),
        "duplicates": sum(n - 1 for k, n in saga.mails.items() if n > 1),
        "unowed": sum(n for k, n in saga.mails.items() if k not in owed),
    }


def _abbrev(versions: list[int]) -> str:
    for i, ver in enumerate(versions):
        if ver != i + 1:
            return f"... {versions[max(0, i - 3) : i + 3]} (expected {i + 1} at position {i})"
    return str(versions[:10])
