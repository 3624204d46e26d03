"""Probes, metrics and correlated logs across processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from eventfold.broker import free_port
from eventfold.kafka import create_topics
from eventfold.settings import DatabaseSettings, ProjectorSettings
from tests.e2e.processes import ServiceProcess, started
from tests.helpers import uid, wait_until
from tests.support.bank import all_topics


async def test_projector_port_and_correlation_from_http_to_projector_logs(
    make_settings, fresh_pg_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    settings = make_settings(
        DatabaseSettings(write_db_url=fresh_pg_url, read_db_url=fresh_pg_url),
        projector=ProjectorSettings(projector_metrics_port=metrics_port, projector_session_timeout_ms=2000),
    )
    await create_topics(settings.kafka, all_topics(settings))
    commands = await started(settings, "command-api", log=tmp_path / "command.log")
    queries = await started(settings, "query-api", log=tmp_path / "query.log")
    projector = ServiceProcess(
        settings, "projector", log=tmp_path / "projector.log", extra_env={"EVENTFOLD_LOG_LEVEL": "DEBUG"}
    )
    projector.port = metrics_port
    projector.start()
    await projector.ready()
    sid, correlation = uid("obs"), uid("corr")
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{commands.url}/commands/account/{sid}",
            json={"type": "OpenAccount", "data": {"owner": "O"}},
            headers={"X-Correlation-ID": correlation},
        )
        assert r.status_code == 200
        seen = await http.get(
            f"{queries.url}/accounts/{sid}", params={"wait_for": r.json()["position"], "wait_timeout": 30}
        )
        assert seen.status_code == 200

        async def projector_counted() -> bool:
            text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            return 'eventfold_projector_events_applied_total{projection="accounts"} 1.0' in text

        await wait_until(projector_counted, timeout=15, what="the projector's metrics")
        ready = await http.get(f"http://127.0.0.1:{metrics_port}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["broker"] == "ok"  # the projector cannot work without Kafka
        query_metrics = (await http.get(f"{queries.url}/metrics")).text
        assert 'eventfold_query_seconds_count{route="/accounts/{account_id}",status="200"}' in query_metrics
        # `eventfold status` reads what GET /projections reads.
        report = (await http.get(f"{queries.url}/projections")).json()
        api = report["projections"] + report["reactors"] + report["process_managers"]
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "eventfold.cli", "status", "--json"],
            env={**os.environ, **settings.to_env()},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        shown = orjson.loads(cli.stdout)
        assert [(p["name"], p["state"], p["events_applied"], p["partitions"]) for p in shown] == [
            (p["name"], p["state"], p["events_applied"], p["partitions"]) for p in api
        ]
        assert shown[0]["events_applied"] == 1 and shown[0]["lag"] == 0
        table = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "eventfold.cli", "status"],
            env={**os.environ, **settings.to_env(), "COLUMNS": "120"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "accounts" in table.stdout and "live" in table.stdout
        too_big = await http.get(f"{queries.url}/accounts/{sid}", headers={"X-Padding": "x" * 20_000})
        assert (too_big.status_code, too_big.json()["code"]) == (431, "headers_too_large")

    def logged(path: Path) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    async def projector_logged() -> bool:
        return any(e.get("correlation_id") == correlation for e in logged(tmp_path / "projector.log"))

    # The command's correlation id travels HTTP -> envelope -> Kafka -> the projector's log line.
    await wait_until(projector_logged, timeout=15, what="a projector log line with the correlation id")
