"""Request limits as a client meets them over a real socket, under the real server.

An answer sent while the client is still writing its body must still reach
the client: over ASGI in memory this cannot be seen, only under uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventfold.kafka import create_topics
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import uid

TEN_MB = 10 * 1024 * 1024


@pytest.fixture
async def command_api(make_settings: Any, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    settings = make_settings()
    await create_topics(settings.kafka, [settings.kafka.topic("account")])
    api = await started(settings, "command-api", log=tmp_path / "api.log")
    try:
        yield api
    finally:
        api.stop()


def _assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


async def test_a_ten_megabyte_body_gets_the_413_problem(command_api: ServiceProcess) -> None:
    body = b'{"type": "Deposit", "data": {"amount": 1, "pad": "' + b"x" * TEN_MB + b'"}}'
    async with httpx.AsyncClient(base_url=command_api.url, timeout=60) as http:
        r = await http.post(
            f"/commands/account/{uid('big')}", content=body, headers={"content-type": "application/json"}
        )
        _assert_problem(r, 413, "body_too_large")
        # The connection was left clean: the same client goes on working.
        opened = {"type": "OpenAccount", "data": {"owner": "L"}}
        ok = await http.post(f"/commands/account/{uid('ok')}", json=opened)
        # Accepted: 200, or 202 if the service's first publish is still connecting.
        assert ok.status_code in (200, 202) and ok.json()["version"] == 1, ok.text


async def test_a_ten_megabyte_chunked_body_gets_the_413_problem(command_api: ServiceProcess) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit is found while reading.
        yield b'{"type": "Deposit", "data": {"pad": "'
        for _ in range(TEN_MB // 65536):
            yield b"x" * 65536
        yield b'"}}'

    async with httpx.AsyncClient(base_url=command_api.url, timeout=60) as http:
        r = await http.post(
            f"/commands/account/{uid('big')}", content=chunks(), headers={"content-type": "application/json"}
        )
        _assert_problem(r, 413, "body_too_large")


async def test_oversized_headers_with_a_large_body_get_the_431_problem(command_api: ServiceProcess) -> None:
    body = b'{"type": "Deposit", "data": {"pad": "' + b"x" * TEN_MB + b'"}}'
    async with httpx.AsyncClient(base_url=command_api.url, timeout=60) as http:
        r = await http.post(
            f"/commands/account/{uid('hdr')}",
            content=body,
            headers={"content-type": "application/json", "x-padding": "p" * 20_000},
        )
        _assert_problem(r, 431, "headers_too_large")


async def test_expect_100_continue_over_the_limit_is_refused_before_the_body(
    command_api: ServiceProcess,
) -> None:
    # A client that waits for 100 Continue learns the body is too large without sending it.
    reader, writer = await asyncio.open_connection("127.0.0.1", command_api.port)
    try:
        writer.write(
            f"POST /commands/account/{uid('exp')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {TEN_MB}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"application/problem+json" in head.lower()
    finally:
        writer.close()
