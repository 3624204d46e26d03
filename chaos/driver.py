"""The client side: concurrent commands, each retried with its key until it has an answer.

Every command has its own Idempotency-Key; every attempt its own
X-Correlation-ID. A transport error or a 5xx leaves the outcome unknown, so
the same command goes again (same key, new correlation id) with backoff, to a
random command API process, as a careful client would: when the driver stops,
every command it sent has a definite answer (2xx or 4xx), or is `unresolved`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass(slots=True)
class Attempt:
    correlation_id: str
    status: int | None  # None: no answer (connection error, timeout)
    code: str | None = None  # problem+json `code`, or the transport error's name
    seconds: float = 0.0


@dataclass(slots=True)
class CommandRecord:
    key: str
    stream_id: str
    type: str
    data: dict[str, Any]
    stream_type: str = "account"
    attempts: list[Attempt] = field(default_factory=list)
    body: dict[str, Any] | None = None  # the final 200/202 body
    if_match: int | None = None
    # A repeat of an earlier command's key: `replay` (same body) or `reuse` (another body).
    repeat_of: CommandRecord | None = None
    repeat: str | None = None
    n: int = 0  # unique per command, even when the key is a repeat: names its attempts

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts and self.attempts[-1].status is not None else None

    @property
    def acknowledged(self) -> bool:
        f = self.final
        return f is not None and f.status in (200, 202)

    @property
    def retried(self) -> bool:
        return len(self.attempts) > 1


@dataclass
class Workload:
    """What to send: a few hot accounts everyone hits, many cold ones, lifecycles,
    and transfers out of the hot accounts (the saga moves their money)."""

    run_id: str
    rng: random.Random
    hot: list[str]
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    counter: int = 0

    @classmethod
    def new(cls, run_id: str, seed: int, hot: int = 4) -> Workload:
        return cls(run_id, random.Random(seed), [f"{run_id}-hot-{i}" for i in range(hot)])

    def account(self, label: str) -> str:
        self.counter += 1
        return f"{self.run_id}-{label}-{self.counter}"

    def transfer(self) -> Step:
        """A transfer out of a hot account (never closed, so a refund always lands).

        Most go to another hot account; some to an open cold one; some to a
        closed or never opened account (refused deposit: compensated); the
        amounts sometimes exceed the source's balance (refused withdrawal: failed).
        """
        rng = self.rng
        source = rng.choice(self.hot)
        r = rng.random()
        if r < 0.6 or not self.opened:
            target = rng.choice([h for h in self.hot if h != source])
        elif r < 0.8:
            target = rng.choice(self.opened)
        elif r < 0.9 and self.closed:
            target = rng.choice(self.closed)
        else:
            target = f"{self.run_id}-nowhere-{rng.randint(0, 9)}"
        data = {"source": source, "target": target, "amount": rng.randint(1, 1500)}
        return Step(self.account("t"), "RequestTransfer", data, stream_type="transfer")

    def next_plan(self) -> list[Step]:
        """One command, or a short sequence one worker sends in order."""
        r, rng = self.rng.random(), self.rng
        if r < 0.12:
            return [self.transfer()]
        r = (r - 0.12) / 0.88
        if r < 0.30:
            return [Step(rng.choice(self.hot), "Deposit", {"amount": rng.randint(1, 1000)})]
        if r < 0.55:
            return [Step(rng.choice(self.hot), "Withdraw", {"amount": rng.randint(1, 800)})]
        if r < 0.65 and self.opened:
            return [Step(rng.choice(self.opened), "Deposit", {"amount": rng.randint(1, 500)})]
        if r < 0.73 and self.opened:
            return [Step(rng.choice(self.opened), "Withdraw", {"amount": rng.randint(1, 400)})]
        if r < 0.80:
            sid = self.account("acct")
            self.opened.append(sid)
            return [
                Step(sid, "OpenAccount", {"owner": f"owner-{rng.randint(0, 9)}"}),
                Step(sid, "Deposit", {"amount": rng.randint(1, 1000)}),
            ]
        if r < 0.86:
            # open, fill, empty, close: closes that succeed
            sid, amount = self.account("life"), rng.randint(1, 1000)
            self.closed.append(sid)
            return [
                Step(sid, "OpenAccount", {"owner": "lifecycle"}),
                Step(sid, "Deposit", {"amount": amount}),
                Step(sid, "Withdraw", {"amount": amount}),
                Step(sid, "CloseAccount", {}),
            ]
        if r < 0.89 and self.opened:
            # balance_not_zero, mostly (not on a hot account: one closed would refuse all after it)
            return [Step(rng.choice(self.opened), "CloseAccount", {})]
        if r < 0.91 and self.closed:
            return [Step(rng.choice(self.closed), "Deposit", {"amount": 5})]  # account_closed
        if r < 0.925:
            return [Step(rng.choice(self.hot), "OpenAccount", {"owner": "again"})]  # account_exists
        if r < 0.94:
            return [Step(self.account("never"), "Withdraw", {"amount": 1})]  # account_not_open
        if r < 0.955:
            return [Step(rng.choice(self.hot), "Deposit", {"amount": 0})]  # invalid_command_data
        if r < 0.97:
            # optimistic concurrency on a hot stream: 200 or version_conflict
            return [Step(rng.choice(self.hot), "Deposit", {"amount": rng.randint(1, 100)}, "if_match")]
        if r < 0.985:
            return [Step("", "", {}, "replay")]  # an acknowledged command again, same key and body
        return [Step("", "", {}, "reuse")]  # an acknowledged command's key with another body


@dataclass(frozen=True, slots=True)
class Step:
    stream_id: str
    type: str
    data: dict[str, Any]
    special: str | None = None  # if_match | replay | reuse
    stream_type: str = "account"


class Driver:
    def __init__(
        self,
        urls: list[str],
        workload: Workload,
        *,
        concurrency: int = 12,
        request_timeout_s: float = 10.0,
        resolve_timeout_s: float = 180.0,
    ) -> None:
        self.urls = urls
        self.workload = workload
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.resolve_timeout_s = resolve_timeout_s
        self.records: list[CommandRecord] = []
        self.unresolved: list[CommandRecord] = []
        self.server_errors: list[tuple[str, int, str]] = []  # (correlation id, status, text)
        self.transfers: list[CommandRecord] = []  # acknowledged RequestTransfer commands
        self._pick = random.Random(workload.rng.random())
        self._stop = asyncio.Event()
        self._n = 0
        self._acknowledged: list[CommandRecord] = []
        self._versions: dict[str, int] = {}  # highest acknowledged version per stream

    def stop(self) -> None:
        """No new commands; the ones in hand are still resolved."""
        self._stop.set()

    async def run(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency * 2, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=self.request_timeout_s) as http:
            await self._open_hot(http)
            await asyncio.gather(*(self._worker(http) for _ in range(self.concurrency)))

    async def _open_hot(self, http: httpx.AsyncClient) -> None:
        steps = [Step(sid, "OpenAccount", {"owner": "hot"}) for sid in self.workload.hot]
        await asyncio.gather(*(self._send(http, r) for r in map(self._record, steps) if r))

    async def _worker(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            for step in self.workload.next_plan():
                rec = self._record(step)
                if rec is not None:
                    await self._send(http, rec)

    def _record(self, step: Step) -> CommandRecord | None:
        self._n += 1
        key = f"{self.workload.run_id}-k{self._n}"
        if step.special in ("replay", "reuse"):
            if not self._acknowledged:
                return None
            first = self._pick.choice(self._acknowledged)
            data = dict(first.data)
            if step.special == "reuse":
                if first.type not in ("Deposit", "Withdraw"):
                    return None
                data["amount"] += 1
            # The same request (If-Match included: it is part of the request's hash).
            return CommandRecord(
                first.key,
                first.stream_id,
                first.type,
                data,
                first.stream_type,
                if_match=first.if_match,
                repeat_of=first,
                repeat=step.special,
                n=self._n,
            )
        rec = CommandRecord(key, step.stream_id, step.type, step.data, step.stream_type, n=self._n)
        if step.special == "if_match":
            rec.if_match = self._versions.get(step.stream_id)
        return rec

    async def _send(self, http: httpx.AsyncClient, rec: CommandRecord) -> CommandRecord:
        sid, type_, data = rec.stream_id, rec.type, rec.data
        self.records.append(rec)
        backoff = 0.05
        give_up: float | None = None
        failed: str | None = None  # the process that just failed us; try another first
        while True:
            cid = f"{self.workload.run_id}-c{rec.n}-a{len(rec.attempts) + 1}"
            base = self._pick.choice([u for u in self.urls if u != failed] or self.urls)
            url = f"{base}/commands/{rec.stream_type}/{sid}"
            headers = {"Idempotency-Key": rec.key, "X-Correlation-ID": cid}
            if rec.if_match is not None:
                headers["If-Match"] = f'"{rec.if_match}"'
            began = time.monotonic()
            try:
                resp = await http.post(url, json={"type": type_, "data": data}, headers=headers)
            except httpx.TransportError as exc:
                failed = base
                rec.attempts.append(Attempt(cid, None, type(exc).__name__, time.monotonic() - began))
            else:
                body = _json(resp)
                code = body.get("code") if isinstance(body, dict) else None
                rec.attempts.append(Attempt(cid, resp.status_code, code, time.monotonic() - began))
                if resp.status_code in (200, 202):
                    rec.body = body
                    if rec.repeat is None:
                        self._acknowledged.append(rec)
                        version = int(body["version"])
                        self._versions[sid] = max(version, self._versions.get(sid, 0))
                        if rec.type == "RequestTransfer":
                            self.transfers.append(rec)
                    return rec
                if 400 <= resp.status_code < 500:
                    return rec
                if resp.status_code != 503:
                    self.server_errors.append((cid, resp.status_code, resp.text[:500]))
                # 503 (nothing appended, Retry-After) and other 5xx: retry
            if self._stop.is_set() and give_up is None:
                give_up = time.monotonic() + self.resolve_timeout_s
            if give_up is not None and time.monotonic() > give_up:
                self.unresolved.append(rec)
                return rec
            await asyncio.sleep(backoff * (0.5 + self._pick.random()))
            backoff = min(backoff * 2, 1.0)


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def dump(records: list[CommandRecord], path: Path) -> None:
    """Every command and its attempts, one JSON object a line, to debug a violation."""
    with open(path, "w") as out:
        for r in records:
            row = {
                "key": r.key,
                "n": r.n,
                "stream_type": r.stream_type,
                "stream_id": r.stream_id,
                "type": r.type,
                "data": r.data,
                "if_match": r.if_match,
                "repeat": r.repeat,
                "attempts": [[a.correlation_id, a.status, a.code, round(a.seconds, 3)] for a in r.attempts],
                "events": (r.body or {}).get("events"),
            }
            out.write(json.dumps(row) + "\n")


def tally(records: list[CommandRecord]) -> dict[str, Any]:
    """Counts for the summary."""
    refused: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    attempts_503 = unknown_attempts = 0
    for rec in records:
        for a in rec.attempts:
            if a.status == 503:
                attempts_503 += 1
            if a.status is None:
                unknown_attempts += 1
        f = rec.final
        if f is not None:
            statuses[f.status or 0] += 1
            if f.status is not None and 400 <= f.status < 500:
                refused[f"{f.status} {f.code}"] += 1
    latencies = sorted(a.seconds for rec in records for a in rec.attempts)
    errors = Counter(a.code for rec in records for a in rec.attempts if a.status is None)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else 0.0

    return {
        "sent": len(records),
        "attempt_seconds": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "unknown_by_error": dict(errors),
        "acknowledged": sum(1 for r in records if r.acknowledged),
        "acknowledged_200": statuses[200],
        "acknowledged_202": statuses[202],
        "acknowledged_after_retry": sum(1 for r in records if r.acknowledged and r.retried),
        "repeated_keys": {kind: sum(1 for r in records if r.repeat == kind) for kind in ("replay", "reuse")},
        "with_if_match": sum(1 for r in records if r.if_match is not None),
        "refused": dict(sorted(refused.items())),
        "attempts_503": attempts_503,
        "commands_with_503": sum(1 for r in records if any(a.status == 503 for a in r.attempts)),
        "unknown_attempts": unknown_attempts,
        "unknown_then_retried": sum(1 for r in records if any(a.status is None for a in r.attempts)),
        "unresolved": sum(1 for r in records if r.final is None or r.final.status not in range(200, 500)),
    }
