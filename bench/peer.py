"""A peer for scale: the `eventsourcing` library on PostgreSQL, same workload.

Optional (`pip install 'eventfold[bench]'`): without the library this phase
reports `null` and says why. The library is synchronous (psycopg 3), so the
saves run in threads, each thread on its own accounts (no conflicts, as in
eventfold's uniform mix). Each save is the library's ordinary path: get the
aggregate (read its events), call a command method, save one new event.

Its projection rate is measured the simple way the library allows: read the
notification log in sections and build the read model eventfold's bank
projection builds (an account row with owner, status, balance and version,
and a ledger row per deposit or withdrawal with the balance after it, both
tables indexed as eventfold's are), the tracking position written in the
same transaction as the rows. Its handler keeps the accounts it has seen in
memory, as a hand-written projector would, and writes each account's last
state once per section.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

PROJECTION_TABLES = (
    """CREATE TABLE IF NOT EXISTS es_accounts (
        id uuid PRIMARY KEY,
        owner text NOT NULL,
        balance bigint NOT NULL,
        status text NOT NULL,
        version integer NOT NULL,
        opened_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS es_accounts_owner_id ON es_accounts (owner, id)",
    "CREATE INDEX IF NOT EXISTS es_accounts_status_id ON es_accounts (status, id)",
    """CREATE TABLE IF NOT EXISTS es_transactions (
        account_id uuid NOT NULL,
        version integer NOT NULL,
        type text NOT NULL,
        amount bigint NOT NULL,
        balance_after bigint NOT NULL,
        occurred_at timestamptz NOT NULL,
        reference text NOT NULL DEFAULT '',
        PRIMARY KEY (account_id, version)
    )""",
    "CREATE TABLE IF NOT EXISTS es_tracking (name text PRIMARY KEY, position bigint NOT NULL)",
)
_UPSERT_ACCOUNT = (
    "INSERT INTO es_accounts AS t (id, owner, balance, status, version, opened_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, "
    "status = excluded.status, version = excluded.version, updated_at = excluded.updated_at "
    "WHERE t.version < excluded.version"
)
_INSERT_ENTRY = (
    "INSERT INTO es_transactions (account_id, version, type, amount, balance_after, occurred_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_KINDS = {"Deposited": ("deposit", 1), "Withdrawn": ("withdrawal", -1)}


def _app_class() -> Any:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class BankAccount(Aggregate):
        @event("Opened")
        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.balance = 0

        @event("Deposited")
        def deposit(self, amount: int) -> None:
            self.balance += amount

        @event("Withdrawn")
        def withdraw(self, amount: int) -> None:
            self.balance -= amount

    class Bank(Application[UUID]):
        def open_account(self, owner: str) -> UUID:
            account = BankAccount(owner)
            self.save(account)
            return account.id

        def deposit(self, account_id: UUID, amount: int) -> None:
            account: BankAccount = self.repository.get(account_id)
            account.deposit(amount)
            self.save(account)

        def withdraw(self, account_id: UUID, amount: int) -> None:
            account: BankAccount = self.repository.get(account_id)
            if amount <= account.balance:
                account.withdraw(amount)
                self.save(account)
            else:  # refused, as eventfold refuses: nothing is saved
                return

    return Bank


def pg_env(dbname: str, pool_size: int) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    from bench.env import PG_ADMIN

    u = make_url(PG_ADMIN)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": u.host or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or "postgres",
        "POSTGRES_PASSWORD": u.password or "",
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    }


class Peer:
    """One `Bank` application over one database, opened accounts kept per thread."""

    def __init__(self, dbname: str, threads: int) -> None:
        self.threads = threads
        self.app = _app_class()(env=pg_env(dbname, threads + 2))
        self.accounts: list[list[UUID]] = [[] for _ in range(threads)]
        self.dsn = _dsn(dbname)

    def close(self) -> None:
        self.app.close()

    def open_accounts(self, n: int) -> None:
        for i in range(n):
            acc = self.app.open_account(f"owner {i}")
            self.accounts[i % self.threads].append(acc)

    def saves(self, duration_s: float, on_progress: Callable[[int], None] | None = None) -> float:
        """Saves/s: deposits and withdrawals, one event a save, `threads` threads."""
        counts = [0] * self.threads
        errors: list[BaseException] = []
        stop_at = time.perf_counter() + duration_s

        def work(t: int) -> None:
            import random

            rnd = random.Random(t)
            mine = self.accounts[t]
            try:
                while time.perf_counter() < stop_at:
                    acc = rnd.choice(mine)
                    if rnd.random() < 0.5:
                        self.app.deposit(acc, rnd.randint(1, 100))
                    else:
                        self.app.withdraw(acc, rnd.randint(1, 50))
                    counts[t] += 1
            except BaseException as exc:
                errors.append(exc)

        t0 = time.perf_counter()
        workers = [threading.Thread(target=work, args=(t,)) for t in range(self.threads)]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            time.sleep(0.25)
            if on_progress is not None:
                on_progress(sum(counts))
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return sum(counts) / elapsed

    def projection(self, section: int = 1000) -> tuple[float, int]:
        """Events/s reading all notifications into accounts and their ledger, tracked."""
        import psycopg

        recorder = self.app.recorder
        mapper = self.app.mapper
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            with conn.cursor() as cur:
                for ddl in PROJECTION_TABLES:
                    cur.execute(ddl)
                cur.execute("TRUNCATE es_accounts, es_transactions, es_tracking")
            conn.commit()
            done = 0
            position = 0
            docs: dict[UUID, list[Any]] = {}
            t0 = time.perf_counter()
            while True:
                notes = recorder.select_notifications(position, section, inclusive_of_start=False)
                if not notes:
                    break
                touched: dict[UUID, list[Any]] = {}
                entries = []
                for n in notes:
                    ev = mapper.to_domain_event(n)
                    at, name = ev.timestamp, type(ev).__name__
                    doc = docs.get(n.originator_id)
                    if doc is None:  # Opened: [owner, balance, status, version, opened_at, updated_at]
                        doc = docs[n.originator_id] = [getattr(ev, "owner", ""), 0, "open", 0, at, at]
                    elif name in _KINDS:
                        kind, sign = _KINDS[name]
                        doc[1] += sign * ev.amount  # type: ignore[attr-defined]
                        entries.append((n.originator_id, n.originator_version, kind, ev.amount, doc[1], at))  # type: ignore[attr-defined]
                    doc[3], doc[5] = n.originator_version, at
                    touched[n.originator_id] = doc
                position = notes[-1].id
                with conn.cursor() as cur:
                    cur.executemany(
                        _UPSERT_ACCOUNT, [(k, d[0], d[1], d[2], d[3], d[4], d[5]) for k, d in touched.items()]
                    )
                    cur.executemany(_INSERT_ENTRY, entries)
                    cur.execute(
                        "INSERT INTO es_tracking (name, position) VALUES ('accounts', %s) "
                        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                        (position,),
                    )
                conn.commit()
                done += len(notes)
            elapsed = time.perf_counter() - t0
        return (done / elapsed if elapsed > 0 else 0.0), done


def _dsn(dbname: str) -> str:
    from bench.env import PG_ADMIN, _dsn

    return _dsn(PG_ADMIN, dbname)


def available() -> str | None:
    """None if the library and its PostgreSQL driver import, else why not."""
    try:
        import eventsourcing.postgres  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"not installed: {exc} (pip install 'eventfold[bench]')"
    return None


if __name__ == "__main__":  # a manual smoke run against an existing database
    peer = Peer(os.environ["BENCH_ES_DB"], threads=4)
    peer.open_accounts(100)
    print(peer.saves(2.0), peer.projection())
    peer.close()
