"""A team's own domain, from outside this repository, served by `eventfold dev`.

`examples/shelf.py` is copied into a folder of its own, put on PYTHONPATH, and
served with `EVENTFOLD_APP=shelf:app eventfold dev` from another working
directory; everything a user does with it goes over HTTP and the CLI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from eventfold.broker import free_port
from tests.e2e.processes import ROOT
from tests.helpers import wait_until

EVENTFOLD = str(Path(sys.executable).parent / "eventfold")


@dataclass
class Dev:
    commands: httpx.AsyncClient
    queries: httpx.AsyncClient
    env: dict[str, str]
    cwd: Path


def user_env(packages: Path, app: str = "shelf:app") -> dict[str, str]:
    """A user's environment: none of ours, their packages on PYTHONPATH, their app named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
    env["PYTHONPATH"] = str(packages)
    env["EVENTFOLD_APP"] = app
    return env


@asynccontextmanager
async def shelf_dev(tmp_path: Path) -> AsyncIterator[Dev]:
    packages, work = tmp_path / "packages", tmp_path / "work"
    packages.mkdir()
    work.mkdir()
    shutil.copy(ROOT / "examples" / "shelf.py", packages / "shelf.py")
    async with dev_serving(user_env(packages), work, "shelf") as dev:
        yield dev


@asynccontextmanager
async def dev_serving(env: dict[str, str], work: Path, name: str) -> AsyncIterator[Dev]:
    """`eventfold dev` on the embedded broker, run in `work` with `env`, until the block ends."""
    ports = {"command": free_port(), "query": free_port(), "kafka": free_port()}
    argv = [EVENTFOLD, "dev", "--command-port", str(ports["command"]), "--query-port", str(ports["query"])]
    argv += ["--kafka-port", str(ports["kafka"]), "--broker", "tansu"]
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled without blocking
        argv, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        cbase, qbase = f"http://127.0.0.1:{ports['command']}", f"http://127.0.0.1:{ports['query']}"

        async def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"eventfold dev exited:\n{proc.communicate()[0]}")
            try:
                async with httpx.AsyncClient() as c:
                    ready = [(await c.get(f"{b}/readyz", timeout=1)).status_code for b in (cbase, qbase)]
                    return ready == [200, 200]
            except httpx.HTTPError:
                return False

        await wait_until(up, timeout=90, interval=0.2, what=f"eventfold dev serving {env['EVENTFOLD_APP']}")
        key = (work / ".eventfold" / "dev.key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        dev_env = dict(
            line.split("=", 1) for line in (work / ".eventfold" / "dev.env").read_text().splitlines()
        )
        async with (
            httpx.AsyncClient(base_url=cbase, headers=auth, timeout=30) as commands,
            httpx.AsyncClient(base_url=qbase, headers=auth, timeout=30) as queries,
        ):
            yield Dev(commands, queries, {**env, **dev_env}, work)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"app          {name} ({env['EVENTFOLD_APP']})" in out, out


async def _send(dev: Dev, book: str, type_: str, **data: Any) -> httpx.Response:
    return await dev.commands.post(f"/commands/book/{book}", json={"type": type_, "data": data})


def _problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    if code is not None:
        assert body["code"] == code, body
    return body


async def _cli(dev: Dev, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [EVENTFOLD, *args],
        env=dev.env,
        cwd=dev.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_shelf_runs_from_outside_the_repository(tmp_path: Path) -> None:
    async with shelf_dev(tmp_path) as dev:
        r = await _send(dev, "b-1", "AddBook", title="Dune")
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        _problem(await _send(dev, "b-1", "AddBook", title="Dune"), 422, "book_exists")
        _problem(await _send(dev, "b-9", "LendBook", member="ann"), 422, "no_such_book")
        _problem(await _send(dev, "b-1", "AddBook", title=""), 422)
        lent = await _send(dev, "b-1", "LendBook", member="ann")
        assert lent.status_code == 200, lent.text
        _problem(await _send(dev, "b-1", "LendBook", member="bob"), 422, "book_lent")

        # The document, read after the write.
        r = await dev.queries.get(
            "/views/books/b-1", params={"wait_for": lent.json()["position"], "wait_timeout": 30}
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["id"], doc["version"], doc["title"], doc["lent_to"], doc["times_lent"]) == (
            "b-1",
            2,
            "Dune",
            "ann",
            1,
        )
        assert r.headers["etag"] == '"2"'
        assert (
            await dev.queries.get("/views/books/b-1", headers={"If-None-Match": '"2"'})
        ).status_code == 304
        _problem(await dev.queries.get("/views/books/b-404"), 404)

        # Pages of the documents matching a declared filter.
        last = None
        for n in range(2, 6):
            assert (await _send(dev, f"b-{n}", "AddBook", title=f"Book {n}")).status_code == 200
            last = await _send(dev, f"b-{n}", "LendBook", member="ann" if n % 2 else "cy")
            assert last.status_code == 200
        assert last is not None
        seen: list[str] = []
        params: dict[str, Any] = {"lent_to": "ann", "limit": 1, "wait_for": last.json()["position"]}
        while True:
            page = (await dev.queries.get("/views/books", params=params)).json()
            seen += [d["id"] for d in page["items"]]
            assert all(d["lent_to"] == "ann" for d in page["items"])
            if page["next_cursor"] is None:
                break
            params = {"lent_to": "ann", "limit": 1, "cursor": page["next_cursor"]}
        assert seen == ["b-1", "b-3", "b-5"]
        _problem(await dev.queries.get("/views/books", params={"times_lent": 1}), 400)

        # The child rows, in version order.
        assert (await _send(dev, "b-1", "ReturnBook")).status_code == 200
        again = await _send(dev, "b-1", "LendBook", member="dee")
        r = await dev.queries.get(
            "/views/books/b-1/book_loans", params={"wait_for": again.json()["position"]}
        )
        assert [(row["version"], row["member"]) for row in r.json()["items"]] == [(2, "ann"), (4, "dee")]
        _problem(await dev.queries.get("/views/books/b-404/book_loans"), 404)

        # The OpenAPI document types the view from the table's columns.
        spec = (await dev.queries.get("/openapi.json")).json()
        assert "/views/books/{id}" in spec["paths"]
        assert "/views/books/{id}/book_loans" in spec["paths"]
        text = str(spec["components"]["schemas"])
        for column in ("title", "lent_to", "times_lent"):
            assert column in text

        # Replay and rebuild from the topic; the documents come back the same.
        before = (await dev.queries.get("/views/books/b-1")).json()
        replayed = await _cli(dev, "replay", "books")
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed books" in replayed.stderr + replayed.stdout
        rebuilt = await _cli(dev, "rebuild", "books")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert (await dev.queries.get("/views/books/b-1")).json() == before
        status = await _cli(dev, "status", "--json")
        assert status.returncode == 0 and '"books"' in status.stdout, status.stderr


async def test_a_wrong_app_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    for spec, says in [
        ("shelf", "must look like package.module:attribute"),
        ("nosuchmodule:app", "cannot import 'nosuchmodule'"),
        ("json:app", "module 'json' has no attribute 'app'"),
        ("json:dumps", "not an eventfold App"),
    ]:
        done = await asyncio.to_thread(
            subprocess.run,
            [EVENTFOLD, "--app", spec, "topics", "create"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, (spec, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (spec, done.stderr)


async def test_the_warehouse_example_is_served_through_eventfold_app(tmp_path: Path) -> None:
    env = user_env(tmp_path, "examples.warehouse:app")
    async with dev_serving(env, tmp_path, "warehouse") as dev:

        async def send(stream: str, sid: str, type_: str, **data: Any) -> httpx.Response:
            return await dev.commands.post(f"/commands/{stream}/{sid}", json={"type": type_, "data": data})

        assert (await send("product", "p-1", "RegisterProduct", name="lamp")).status_code == 200
        assert (await send("product", "p-1", "Restock", quantity=5)).status_code == 200
        _problem(await send("product", "p-1", "Reserve", quantity=9, order_id="o-1"), 422, "out_of_stock")
        reserved = await send("product", "p-1", "Reserve", quantity=2, order_id="o-1")
        assert reserved.status_code == 200, reserved.text
        for n, customer in enumerate(["ann", "bob", "ann"], 1):
            r = await send("order", f"o-{n}", "PlaceOrder", customer=customer, product_id="p-1", quantity=1)
            assert r.status_code == 200, r.text
        last_placed = r.json()["position"]
        shipped = await send("order", "o-1", "ShipOrder")
        assert shipped.status_code == 200
        _problem(await send("order", "o-1", "CancelOrder"), 422, "order_shipped")

        wait = {"wait_for": reserved.json()["position"], "wait_timeout": 30}
        stock = (await dev.queries.get("/views/stock/p-1", params=wait)).json()
        assert (stock["on_hand"], stock["reserved"], stock["version"]) == (3, 2, 3)
        moves = (await dev.queries.get("/views/stock/p-1/warehouse_movements")).json()["items"]
        assert [(m["change"], m["order_id"]) for m in moves] == [(5, None), (-2, "o-1")]
        wait = {"wait_for": shipped.json()["position"], "wait_timeout": 30}
        assert (await dev.queries.get("/views/orders/o-1", params=wait)).json()["status"] == "shipped"
        query = {"status": "placed", "customer": "ann", "wait_for": last_placed, "wait_timeout": 30}
        placed = (await dev.queries.get("/views/orders", params=query)).json()
        assert [o["id"] for o in placed["items"]] == ["o-3"]
