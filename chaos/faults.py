"""The fault injector: seeded, bounded in count and time, stops by itself.

The schedule starts with one fault of every kind in a shuffled order, so even
a short run injects each kind at least once, then draws kinds at random.
Killed processes are started again after a short random delay.

On the Apache Kafka cluster (3 nodes, topics with RF 3 and min.insync.replicas
2) the broker faults are aimed at the node that leads the most event
partitions, or at the KRaft quorum's leader, and one fault takes two nodes out
at once, so that fewer than two replicas are in sync: commands must then answer
202 (durable, not yet published) and reach the topic after the nodes return.
Broker faults run one at a time and heal before the next begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from chaos.cluster import PG_ADMIN_URL, Cluster, database_outage, restart_postgres
from eventfold.apache_kafka import ApacheKafkaCluster
from eventfold.kafka import new_admin
from eventfold.settings import KafkaSettings

log = logging.getLogger("chaos.faults")

PROCESS_KINDS = (
    "kill_command_api",
    "kill_publisher",
    "kill_projector",
    "kill_reactor",
    "kill_process_manager",
    # SIGSTOP a service (command API, projector, reactor or process manager) for a
    # few seconds: a hung process whose connections and group membership time out.
    "pause_service",
    # The SMTP server goes away for a few seconds: the welcome mails must retry through it.
    "smtp_outage",
    # The run's own database refuses connections for a few seconds and drops the open
    # ones: a PostgreSQL restart as the services see it, without touching other databases.
    "database_outage",
    "restart_postgres",
)
BROKER_KINDS = {
    "tansu": ("pause_broker",),
    "apache": (
        "kill_leader_broker",  # SIGKILL the node leading the most event partitions
        "pause_leader_broker",  # SIGSTOP it: a hung broker, not a dead one
        "restart_broker",  # SIGTERM a node and start it again (a rolling restart's step)
        "kill_controller",  # SIGKILL the KRaft quorum's leader
        "lose_in_sync_quorum",  # SIGKILL two nodes: fewer than min.insync.replicas in sync
    ),
}
KINDS = PROCESS_KINDS + BROKER_KINDS["tansu"]
# Faults during which nothing can be published or committed: a transfer's clock
# is not held to them (chaos/oracle.py).
OUTAGE_KINDS = frozenset(
    (*BROKER_KINDS["apache"], *BROKER_KINDS["tansu"], "restart_postgres", "database_outage")
)


def kinds_for(broker: str, pg_restart: bool = True) -> list[str]:
    """Every fault kind a run on this broker injects."""
    return [k for k in PROCESS_KINDS + BROKER_KINDS[broker] if pg_restart or k != "restart_postgres"]


@dataclass
class FaultLog:
    injected: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, detail)
    # (start, end) in epoch seconds of every fault that made the broker or the
    # database unavailable, from its injection until it healed.
    outages: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Processes that died without being killed (a supervisor would restart them too).
    unexpected_exits: list[str] = field(default_factory=list)


class FaultInjector:
    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        *,
        window_s: float,
        pg_restart: bool = True,
        max_faults: int = 500,
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.window_s = window_s
        self.kinds = kinds_for(cluster.broker.kind, pg_restart)
        self.max_faults = max_faults
        self.log = FaultLog()
        self._started = 0.0
        self._restarts: set[asyncio.Task[None]] = set()
        self._killed: set[str] = set()  # killed by us, restart pending

    def schedule(self) -> list[tuple[float, str]]:
        """(offset in seconds, kind): a first round of every kind, then random ones."""
        first = list(self.kinds)
        self.rng.shuffle(first)
        # The first round fits into the first 70% of the window, whatever its length.
        gap = min(12.0, 0.7 * self.window_s / (len(first) + 1))
        out: list[tuple[float, str]] = []
        t = 0.0
        for kind in first:
            t += self.rng.uniform(0.6 * gap, 1.0 * gap)
            out.append((t, kind))
        while len(out) < self.max_faults:
            t += self.rng.uniform(2.0, 12.0)
            if t > self.window_s:
                break
            out.append((t, self.rng.choice(self.kinds)))
        return out

    async def run(self) -> FaultLog:
        self._started = time.monotonic()
        supervisor = asyncio.create_task(self._supervise())
        try:
            await self._run_schedule()
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        return self.log

    async def _supervise(self) -> None:
        """Restart processes that died on their own, and say so: that is a finding."""
        while True:
            await asyncio.sleep(0.5)
            for s in self.cluster.services:
                if s.proc is None or s.alive or s.name in self._killed:
                    continue
                tail = s.log.read_text(errors="replace").strip().splitlines()[-1:] if s.log.exists() else []
                self._note_exit(f"{s.name} exited with {s.proc.returncode}: {tail[0][:300] if tail else ''}")
                s.start()

    def _note_exit(self, detail: str) -> None:
        self.log.unexpected_exits.append(f"[{time.monotonic() - self._started:.1f}s] {detail}")
        print(f"  [{time.monotonic() - self._started:7.1f}s] UNEXPECTED EXIT {detail}", flush=True)

    async def _run_schedule(self) -> None:
        for i, (at, kind) in enumerate(self.schedule()):
            # Broker faults heal before they return, so the schedule can fall
            # behind; past the window only the first round (one of every kind)
            # still runs, the random rest is dropped rather than bunched up.
            if i >= len(self.kinds) and time.monotonic() - self._started > self.window_s:
                break
            delay = self._started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.time()
            try:
                await self._inject(kind)
            except Exception as exc:  # a fault that failed to happen is reported, not fatal
                self.log.errors.append(f"{kind}: {exc!r}")
                log.warning("fault %s failed: %r", kind, exc)
            if kind in OUTAGE_KINDS:
                self.log.outages.append((began, time.time()))
        if self._restarts:
            await asyncio.gather(*self._restarts, return_exceptions=True)

    def _note(self, kind: str, detail: str) -> None:
        self.log.injected[kind] += 1
        self.log.events.append((round(time.monotonic() - self._started, 2), kind, detail))
        print(f"  [{time.monotonic() - self._started:7.1f}s] fault {kind}: {detail}", flush=True)

    async def _inject(self, kind: str) -> None:
        if kind in BROKER_KINDS["apache"]:
            await self._broker_fault(kind)
            return
        if kind == "pause_broker":
            seconds = self.rng.uniform(1.0, 5.0)
            self._note(kind, f"SIGSTOP for {seconds:.1f}s")
            self.cluster.broker.pause()
            try:
                await asyncio.sleep(seconds)
            finally:
                self.cluster.broker.resume()
            return
        if kind == "restart_postgres":
            self._note(kind, "pg_ctlcluster restart")
            await asyncio.to_thread(restart_postgres)
            return
        if kind == "database_outage":
            seconds = self.rng.uniform(1.0, 4.0)
            self._note(kind, f"connections refused and dropped for {seconds:.1f}s")
            await database_outage(PG_ADMIN_URL, self.cluster.db_url, seconds)
            return
        if kind == "smtp_outage":
            seconds = self.rng.uniform(1.0, 3.0)
            self._note(kind, f"SMTP server down for {seconds:.1f}s")
            self.cluster.mail.stop()
            try:
                await asyncio.sleep(seconds)
            finally:
                self.cluster.mail.start()
            return
        if kind == "pause_service":
            await self._pause_service()
            return
        role = {
            "kill_command_api": "command-api",
            "kill_publisher": "publisher",
            "kill_projector": "projector",
            "kill_reactor": "reactors",
            "kill_process_manager": "process-managers",
        }[kind]
        candidates = [s for s in self.cluster.by_kind(role) if s.alive]
        if not candidates:
            self._note(kind, "skipped: none alive")
            self.log.injected[kind] -= 1
            return
        victim = self.rng.choice(candidates)
        after = self.rng.uniform(0.5, 3.0)
        self._note(kind, f"SIGKILL {victim.name}, restart in {after:.1f}s")
        self._killed.add(victim.name)
        victim.kill()

        async def restart() -> None:
            await asyncio.sleep(after)
            if not victim.alive:
                victim.start()
            self._killed.discard(victim.name)

        task = asyncio.create_task(restart())
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _pause_service(self) -> None:
        paused = ("command-api", "projector", "reactors", "process-managers")
        candidates = [s for s in self.cluster.services if s.kind in paused and s.alive]
        if not candidates:
            self._note("pause_service", "skipped: none alive")
            self.log.injected["pause_service"] -= 1
            return
        victim = self.rng.choice(candidates)
        seconds = self.rng.uniform(1.0, 5.0)
        self._note("pause_service", f"SIGSTOP {victim.name} for {seconds:.1f}s")
        victim.pause()
        try:
            await asyncio.sleep(seconds)
        finally:
            victim.resume()

    async def _broker_fault(self, kind: str) -> None:
        """One fault on the Apache cluster, healed before it returns."""
        cluster = self.cluster.broker
        assert isinstance(cluster, ApacheKafkaCluster)
        settings = self.cluster.settings
        assert settings is not None
        if kind == "pause_leader_broker":
            node = await busiest_leader(settings.kafka, self.cluster.event_topics)
            seconds = self.rng.uniform(2.0, 8.0)
            self._note(kind, f"SIGSTOP node {node} (leads the most partitions) for {seconds:.1f}s")
            cluster.pause(node)
            try:
                await asyncio.sleep(seconds)
            finally:
                cluster.resume(node)
            return
        if kind == "restart_broker":
            node = self.rng.choice([n.node_id for n in cluster.nodes])
            self._note(kind, f"SIGTERM node {node}, then start it again")
            await asyncio.to_thread(cluster.kill, node, graceful=True)
            await asyncio.to_thread(cluster.restart, node)
            return
        if kind == "kill_controller":
            victims = [quorum_leader(cluster)]
            detail = f"SIGKILL node {victims[0]} (the KRaft quorum's leader)"
        elif kind == "kill_leader_broker":
            victims = [await busiest_leader(settings.kafka, self.cluster.event_topics)]
            detail = f"SIGKILL node {victims[0]} (leads the most partitions)"
        else:  # lose_in_sync_quorum
            first = await busiest_leader(settings.kafka, self.cluster.event_topics)
            other = self.rng.choice([n.node_id for n in cluster.nodes if n.node_id != first])
            victims = [first, other]
            detail = f"SIGKILL nodes {first} and {other}: one replica of three left"
        down = self.rng.uniform(3.0, 10.0)
        self._note(kind, f"{detail}, restart in {down:.1f}s")
        for node in victims:
            cluster.kill(node)
        await asyncio.sleep(down)
        for node in victims:
            await asyncio.to_thread(cluster.restart, node)


async def busiest_leader(kafka: KafkaSettings, topics: list[str]) -> int:
    """The node that leads the most partitions of these topics."""
    admin = new_admin(kafka, request_timeout_ms=5000)
    await asyncio.wait_for(admin.start(), 10)
    try:
        described = await admin.describe_topics(topics)
        leaders = Counter(p["leader"] for t in described for p in t["partitions"] if p["leader"] >= 0)
    finally:
        await admin.close()
    if not leaders:
        raise RuntimeError("no partition has a leader")
    return int(leaders.most_common(1)[0][0])


def quorum_leader(cluster: ApacheKafkaCluster) -> int:
    """The KRaft quorum's leader, as the running nodes last recorded it (highest epoch wins)."""
    best: tuple[int, int] | None = None
    for n in cluster.nodes:
        if not n.running:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads((n.directory / "data" / "__cluster_metadata-0" / "quorum-state").read_text())
            if state["leaderId"] >= 0 and (best is None or state["leaderEpoch"] > best[1]):
                best = (int(state["leaderId"]), int(state["leaderEpoch"]))
    if best is None:
        raise RuntimeError("no running node knows the quorum's leader")
    return best[0]
