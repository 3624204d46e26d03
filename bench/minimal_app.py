"""The smallest useful endpoint: parse a JSON body, INSERT one row, answer JSON.

It is the ceiling for the command API on this machine (same server, same
framework, same database), run with `uvicorn --factory bench.minimal_app:create_app`
and `BENCH_DB_URL` set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

TABLE = """
CREATE TABLE IF NOT EXISTS bench_minimal (
    id uuid PRIMARY KEY,
    stream_id text NOT NULL,
    amount bigint NOT NULL
)"""


class Item(BaseModel):
    amount: int = Field(gt=0)


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(os.environ["BENCH_DB_URL"], min_size=10, max_size=20)
        async with pool.acquire() as conn:
            await conn.execute(TABLE)
        app.state.pool = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/items/{stream_id}")
    async def create_item(stream_id: str, item: Item, request: Request) -> dict[str, object]:
        """Insert one row."""
        pool: asyncpg.Pool = request.app.state.pool
        row_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO bench_minimal (id, stream_id, amount) VALUES ($1, $2, $3)",
            row_id,
            stream_id,
            item.amount,
        )
        return {"id": str(row_id), "stream_id": stream_id, "amount": item.amount}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return app
