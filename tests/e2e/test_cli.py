"""The `eventfold` command line as a user runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from eventfold.broker import free_port, port_open
from eventfold.settings import DatabaseSettings
from tests.e2e.processes import ROOT
from tests.helpers import read_topic, uid, wait_until


def eventfold(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventfold.cli", *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_migrate_and_topics_create(make_settings, sqlite_db, tmp_path: Path) -> None:
    settings = make_settings(sqlite_db)
    env = settings.to_env()
    done = await asyncio.to_thread(eventfold, "migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "write store migrated" in done.stderr and "read store migrated" in done.stderr
    made = await asyncio.to_thread(eventfold, "topics", "create", env=env)
    assert made.returncode == 0, made.stderr
    assert f"created {settings.kafka.topic('account')}" in made.stderr
    again = await asyncio.to_thread(eventfold, "topics", "create", env=env)
    assert f"exists  {settings.kafka.topic('account')}" in again.stderr


async def test_clear_errors_for_unreachable_parts(make_settings, sqlite_db) -> None:
    env = make_settings(sqlite_db).to_env()
    env["EVENTFOLD_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    failed = await asyncio.to_thread(eventfold, "topics", "create", env=env)
    assert failed.returncode == 1 and "cannot reach Kafka" in failed.stderr
    assert "Traceback" not in failed.stderr
    env["EVENTFOLD_WRITE_DB_URL"] = "postgresql://postgres@127.0.0.1:9/none"
    failed = await asyncio.to_thread(eventfold, "migrate", env=env)
    assert failed.returncode == 1 and "cannot reach the write store" in failed.stderr
    unknown = await asyncio.to_thread(eventfold, "serve", "nonsense", env=env)
    assert unknown.returncode != 0 and "nonsense" in unknown.stderr


def _one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 1, and stderr is one short error line naming the cause."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


async def test_a_store_not_migrated_is_named_with_the_fix(make_settings, tmp_path: Path) -> None:
    read_url = f"sqlite+aiosqlite:///{tmp_path}/read.db"
    db = DatabaseSettings(write_db_url=f"sqlite+aiosqlite:///{tmp_path}/write.db", read_db_url=read_url)
    env = make_settings(db).to_env()
    for command in (["status"], ["dlq", "list"], ["dlq", "retry", "1"], ["rebuild", "accounts"]):
        done = await asyncio.to_thread(eventfold, *command, env=env)
        if command[0] == "rebuild":  # its progress bar has started: the error is the last line
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.strip().splitlines()[-1] == (
                f"error: the read store at {read_url} is not migrated; run `eventfold migrate`"
            )
            continue
        _one_line_error(done, f"the read store at {read_url} is not migrated; run `eventfold migrate`")


async def test_unknown_names_and_ids_are_errors(make_settings, sqlite_db) -> None:
    env = make_settings(sqlite_db).to_env()
    unknown = uid("proj")
    for command in (
        ["dlq", "list", "--projection", unknown],
        ["dlq", "retry", "--all", "--projection", unknown],
        ["replay", unknown],
        ["rebuild", unknown],
    ):
        done = await asyncio.to_thread(eventfold, *command, env=env)
        _one_line_error(done, f"no projection named {unknown!r} (known: accounts, transfers)")
    done = await asyncio.to_thread(eventfold, "dlq", "retry", "999", env=env)
    _one_line_error(done, "no dead letter with id 999")
    retry = ["dlq", "retry", "998", "999", "--projection", "accounts"]
    done = await asyncio.to_thread(eventfold, *retry, env=env)
    _one_line_error(done, "no dead letters with ids 998, 999 in projection 'accounts'")
    done = await asyncio.to_thread(eventfold, "replay", "--write-side", unknown, env=env)
    _one_line_error(done, f"no stream type named {unknown!r} (known: account, transfer)")


async def test_unreachable_and_misconfigured_parts_never_show_the_password(make_settings, sqlite_db) -> None:
    env = make_settings(sqlite_db).to_env()
    # Nothing listens on port 9 of loopback.
    env["EVENTFOLD_READ_DB_URL"] = "postgresql://eventfold:hunter2@127.0.0.1:9/none"
    for command in (["status"], ["dlq", "list"], ["dlq", "retry", "--all"]):
        done = await asyncio.to_thread(eventfold, *command, env=env)
        _one_line_error(
            done, "cannot reach the read store at postgresql+asyncpg://eventfold:***@127.0.0.1:9/"
        )
        assert "hunter2" not in done.stderr + done.stdout
    env["EVENTFOLD_READ_DB_URL"] = "oracle://eventfold:hunter2@127.0.0.1:9/none"  # no such driver installed
    done = await asyncio.to_thread(eventfold, "status", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: unexpected ModuleNotFoundError: No module named 'oracledb'",
        "(run with --debug or EVENTFOLD_DEBUG=1 for the traceback)",
    ]
    debug = await asyncio.to_thread(eventfold, "--debug", "status", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    env["EVENTFOLD_PARTITIONS"] = "many"
    done = await asyncio.to_thread(eventfold, "status", env=env)
    _one_line_error(done, "invalid setting EVENTFOLD_PARTITIONS")


async def _a_transfer_completes(commands: str, queries: str, key: str, source: str) -> None:
    """`eventfold dev` runs the process managers too: the bank's transfer saga completes."""
    auth = {"Authorization": f"Bearer {key}"}
    target, tid = uid("dev"), uid("t")
    async with httpx.AsyncClient(base_url=commands, headers=auth) as c:
        for stream, body in [
            (source, {"type": "Deposit", "data": {"amount": 9}}),
            (target, {"type": "OpenAccount", "data": {"owner": "T"}}),
        ]:
            assert (await c.post(f"/commands/account/{stream}", json=body)).status_code == 200
        request = {"type": "RequestTransfer", "data": {"source": source, "target": target, "amount": 9}}
        assert (await c.post(f"/commands/transfer/{tid}", json=request)).status_code == 200
    async with httpx.AsyncClient(base_url=queries, headers=auth) as q:

        async def completed() -> bool:
            r = await q.get(f"/views/transfers/{tid}")
            return r.status_code == 200 and r.json()["status"] == "completed"

        await wait_until(completed, timeout=60, what="the transfer to complete in eventfold dev")


@pytest.mark.parametrize("broker", ["tansu", pytest.param("apache", marks=pytest.mark.apache)])
async def test_dev_runs_everything_and_stops_cleanly(tmp_path: Path, broker: str) -> None:
    ports = {"command": free_port(), "query": free_port(), "kafka": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled without blocking
        [
            sys.executable,
            "-m",
            "eventfold.cli",
            "dev",
            "--data-dir",
            str(tmp_path / "data"),
            "--command-port",
            str(ports["command"]),
            "--query-port",
            str(ports["query"]),
            "--kafka-port",
            str(ports["kafka"]),
            "--broker",
            broker,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{ports['command']}"

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{base}/readyz", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # stop waiting if it died

        # Three JVMs take longer to start than the embedded broker.
        await wait_until(up, timeout=60 if broker == "tansu" else 240, interval=0.2, what="eventfold dev")
        if proc.poll() is not None:  # it died: what it said is the diagnosis
            out = proc.stdout.read() if proc.stdout is not None else ""
            raise AssertionError(f"eventfold dev exited with {proc.returncode}:\n{out[-4000:]}")
        sid = uid("dev")
        key = (tmp_path / "data" / "dev.key").read_text().strip()
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            assert (
                await c.post(f"/commands/account/{sid}", json={}, headers={"Authorization": "Bearer x"})
            ).status_code == 401
            r = await c.post(f"/commands/account/{sid}", json={"type": "OpenAccount", "data": {"owner": "D"}})
            assert r.status_code == 200 and r.json()["published"] is True
            # A browser opening either API's address lands on the query API's console.
            console = f"http://127.0.0.1:{ports['query']}/console"
            assert (await c.get("/", follow_redirects=False)).headers["location"] == console
            page = await c.get(console)
            assert page.status_code == 200 and "eventfold console" in page.text
        assert (tmp_path / "data" / "write.db").exists()
        dev_env = (tmp_path / "data" / "dev.env").read_text()
        assert f"EVENTFOLD_KAFKA_BOOTSTRAP=127.0.0.1:{ports['kafka']}" in dev_env
        # What each broker can do is configuration, written for the other commands.
        idempotence = "true" if broker == "apache" else "false"
        assert f"EVENTFOLD_KAFKA_IDEMPOTENCE={idempotence}" in dev_env
        assert f"EVENTFOLD_KAFKA_HIGHWATER_FROM_FETCH={'false' if broker == 'apache' else 'true'}" in dev_env
        from eventfold.settings import KafkaSettings

        records = await read_topic(
            KafkaSettings(kafka_bootstrap=f"127.0.0.1:{ports['kafka']}"), "eventfold.account.events"
        )
        assert [r.key for r in records] == [sid.encode()]
        await _a_transfer_completes(base, f"http://127.0.0.1:{ports['query']}", key, sid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"eventfold dev did not stop within 30 s of SIGTERM:\n{out}") from None
    assert proc.returncode == 0, out
    assert "stopped." in out
    assert "curl" in out and str(ports["command"]) in out
    assert key in out  # the development key is printed
    # No stray broker: its port is closed once dev has exited, and no JVM of it is left.
    assert not port_open(ports["kafka"])
    strays = await asyncio.to_thread(
        subprocess.run, ["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True
    )
    assert strays.stdout.strip() == "", strays.stdout
