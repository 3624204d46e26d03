"""A command endpoint written by hand with the guarantees eventfold gives a command.

The minimal endpoint (`bench/minimal_app.py`) inserts one row. This one does,
per request, what a team would write to get what eventfold's command API
promises, without a framework:

- read the account's row and lock it (`FOR UPDATE`), so two commands on one
  account are decided one after the other against its latest state;
- decide (a withdrawal beyond the balance is refused with 422);
- in the same transaction, write the new state and the event to an outbox,
  so an acknowledged event cannot be lost between the database and Kafka;
- publish the event to Kafka keyed by the account (`acks=all`, idempotent
  where the broker allows: eventfold's producer settings) and wait for the
  acknowledgement before answering, then delete the outbox row.

It has no group commit, no idempotency keys, no schema versions and no relay
for rows a crash left behind: it is the floor of the work, not a product.
Run with `uvicorn --factory bench.by_hand_app:create_app`, `BENCH_DB_URL`,
`BENCH_ACCOUNTS` and the `EVENTFOLD_*` Kafka settings set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from eventfold.kafka import new_producer
from eventfold.settings import KafkaSettings

TABLES = (
    """CREATE TABLE IF NOT EXISTS bench_by_hand_accounts (
        id text PRIMARY KEY, version bigint NOT NULL, balance bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bench_by_hand_outbox (
        id uuid PRIMARY KEY, key text NOT NULL, value bytea NOT NULL)""",
)
# Every account opened with a balance that the withdrawals will not exhaust.
OPEN_ACCOUNTS = """
INSERT INTO bench_by_hand_accounts (id, version, balance)
SELECT 'acct-' || lpad(i::text, 6, '0'), 1, 1000000 FROM generate_series(0, $1 - 1) AS i
ON CONFLICT (id) DO UPDATE SET version = 1, balance = 1000000"""


class Amount(BaseModel):
    amount: int = Field(gt=0)


class Deposit(BaseModel):
    type: Literal["Deposit"]
    data: Amount


class Withdraw(BaseModel):
    type: Literal["Withdraw"]
    data: Amount


Command = Annotated[Deposit | Withdraw, Field(discriminator="type")]


def create_app() -> FastAPI:
    kafka = KafkaSettings()
    topic = kafka.topic("account")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(os.environ["BENCH_DB_URL"], min_size=10, max_size=20)
        async with pool.acquire() as conn:
            for table in TABLES:
                await conn.execute(table)
            await conn.execute(OPEN_ACCOUNTS, int(os.environ.get("BENCH_ACCOUNTS", "10000")))
        producer = new_producer(kafka)
        await producer.start()
        app.state.pool, app.state.producer = pool, producer
        yield
        await producer.stop()
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/commands/account/{stream_id}", response_model=None)
    async def command(stream_id: str, body: Command, request: Request) -> dict[str, object] | JSONResponse:
        """Decide one deposit or withdrawal, store it with its event, publish, answer."""
        pool: asyncpg.Pool = request.app.state.pool
        event_id = uuid.uuid4()
        async with pool.acquire() as conn:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT version, balance FROM bench_by_hand_accounts WHERE id = $1 FOR UPDATE", stream_id
                )
                if row is None:
                    return JSONResponse({"code": "not_found"}, status_code=404)
                amount = body.data.amount
                if isinstance(body, Withdraw):
                    if amount > row["balance"]:
                        return JSONResponse({"code": "insufficient_funds"}, status_code=422)
                    amount = -amount
                version = row["version"] + 1
                value = orjson.dumps(
                    {
                        "event_id": str(event_id),
                        "type": "Deposited" if amount > 0 else "Withdrawn",
                        "stream_id": stream_id,
                        "version": version,
                        "occurred_at": datetime.now(UTC),
                        "data": {"amount": abs(amount)},
                    }
                )
                await conn.execute(
                    "UPDATE bench_by_hand_accounts SET version = $2, balance = balance + $3 WHERE id = $1",
                    stream_id,
                    version,
                    amount,
                )
                await conn.execute(
                    "INSERT INTO bench_by_hand_outbox (id, key, value) VALUES ($1, $2, $3)",
                    event_id,
                    stream_id,
                    value,
                )
            meta = await request.app.state.producer.send_and_wait(topic, value, key=stream_id.encode())
            await conn.execute("DELETE FROM bench_by_hand_outbox WHERE id = $1", event_id)
        return {
            "stream_id": stream_id,
            "version": version,
            "event_id": str(event_id),
            "position": [meta.partition, meta.offset],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return app
