"""`eventfold dev`: the whole system on one machine, a local broker and SQLite."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

from eventfold.apache_kafka import ApacheKafkaCluster
from eventfold.app import App
from eventfold.auth import ApiKey, digest, load_keys, new_key
from eventfold.broker import EmbeddedBroker, broker_kafka_settings
from eventfold.kafka import create_topics
from eventfold.migrate import upgrade_all
from eventfold.runner import http_server, install_stop_signals, run_servers
from eventfold.settings import AuthSettings, DatabaseSettings, KafkaSettings, Settings

console = Console(soft_wrap=True)  # long curl lines must stay copy-pasteable


LocalBroker = ApacheKafkaCluster | EmbeddedBroker

if TYPE_CHECKING:
    from eventfold.cli.mail_sink import MailSink


def dev_settings(data_dir: Path, bootstrap: str, broker: LocalBroker | None) -> Settings:
    data_dir = data_dir.resolve()
    kafka = KafkaSettings(kafka_bootstrap=bootstrap)
    if broker is not None:
        # What the broker started here can do (README, "Brokers"): the embedded
        # Tansu grants no producer ids, needs partition ends from fetches and
        # holds each fetch for its whole wait.
        kafka = kafka.model_copy(update=broker_kafka_settings(broker))
    db = DatabaseSettings(
        write_db_url=f"sqlite+aiosqlite:///{data_dir / 'write.db'}",
        read_db_url=f"sqlite+aiosqlite:///{data_dir / 'read.db'}",
    )
    return Settings(data_dir=data_dir, kafka=kafka, db=db, auth=dev_auth(data_dir))


def write_env_file(settings: Settings) -> Path:
    """The settings other commands (status, replay, ...) need to reach this system."""
    names = (
        "EVENTFOLD_APP",
        "EVENTFOLD_KAFKA_BOOTSTRAP",
        "EVENTFOLD_KAFKA_IDEMPOTENCE",
        "EVENTFOLD_KAFKA_HIGHWATER_FROM_FETCH",
        "EVENTFOLD_TOPIC_PREFIX",
        "EVENTFOLD_WRITE_DB_URL",
        "EVENTFOLD_READ_DB_URL",
    )
    env = settings.to_env()
    path = settings.data_dir / "dev.env"
    path.write_text("".join(f"{n}={env[n]}\n" for n in names))
    return path


def dev_key(data_dir: Path) -> str:
    """The development key: made once, kept in the data dir (mode 600)."""
    path = data_dir / "dev.key"
    if path.exists():
        return path.read_text().strip()
    token, _ = new_key("dev", ["admin"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def dev_auth(data_dir: Path) -> AuthSettings:
    """Whatever keys the environment configures, plus the development key."""
    configured = AuthSettings()
    if configured.auth_disabled:
        return configured
    token = dev_key(data_dir)
    entry = ApiKey(id="dev", sha256=digest(token), scopes=["admin"])
    keys = [k.model_dump(mode="json") for k in load_keys(configured) if k.id != "dev"] + [
        entry.model_dump(mode="json")
    ]
    return AuthSettings(api_keys=orjson.dumps(keys).decode())


async def start_broker(kind: str, data_dir: Path, kafka_port: int) -> LocalBroker:
    """The broker `eventfold dev` runs: the embedded Tansu, or a local Apache Kafka cluster."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    if kind == "apache":
        folder = data_dir / "kafka"
        # A new cluster each run, as the embedded broker forgets everything too.
        await asyncio.to_thread(shutil.rmtree, folder, True)
        console.print("[green]broker[/green]       starting Apache Kafka, 3 KRaft nodes (jars fetched once)")
        cluster = ApacheKafkaCluster(nodes=3, directory=folder, first_port=kafka_port)
        await cluster.astart()
        where = f"Apache Kafka {cluster.version}, data in {folder}"
        console.print(f"[green]broker[/green]       {cluster.bootstrap} ({where})")
        return cluster
    broker = EmbeddedBroker(kafka_port, log_path=data_dir / "broker.log")
    await broker.astart()
    console.print(f"[green]broker[/green]       {broker.bootstrap} (embedded Tansu, in memory)")
    return broker


async def run_dev(
    app: App,
    data_dir: Path,
    command_port: int,
    query_port: int,
    kafka_port: int,
    external: str | None,
    broker_kind: str = "tansu",
) -> None:
    from command_api.bootstrap import create_app as command_app
    from projector.process_managers import run_process_managers
    from projector.reactors import run_reactors
    from projector.runtime import run_projectors
    from query_api.bootstrap import create_app as query_app

    broker = None if external is not None else await start_broker(broker_kind, data_dir, kafka_port)
    try:
        bootstrap = external if broker is None else broker.bootstrap
        assert bootstrap is not None
        settings = dev_settings(data_dir, bootstrap, broker)
        console_url = f"http://127.0.0.1:{query_port}/console"
        settings.command_api = settings.command_api.model_copy(update={"console_url": console_url})
        await upgrade_all(settings.db.write_db_url, settings.db.read_db_url)
        env_file = write_env_file(settings)
        await create_topics(settings.kafka, app.topics(settings.kafka))
        stop = asyncio.Event()
        install_stop_signals(stop)
        servers = [
            http_server(command_app(settings, app.write_side(), app.schema_dir), "127.0.0.1", command_port),
            http_server(
                query_app(settings, app.projections, app.routers, app.reactors, app.process_managers),
                "127.0.0.1",
                query_port,
            ),
        ]
        sink = await start_mail_sink(app, settings.data_dir)
        projector = asyncio.create_task(run_projectors(settings, list(app.projections), stop))
        reactors = asyncio.create_task(run_reactors(settings, list(app.reactors), stop))
        managers = asyncio.create_task(
            run_process_managers(settings, app.process_managers, app.write_side(), stop)
        )
        console.print(f"[green]app[/green]          {app.name} ({settings.app})")
        console.print(f"[green]command API[/green]  http://127.0.0.1:{command_port}/docs")
        console.print(f"[green]query API[/green]    http://127.0.0.1:{query_port}/docs")
        console.print(f"[green]console[/green]      {console_url} (sign in with the dev key)")
        console.print(f"[green]projector[/green]    {', '.join(p.name for p in app.projections) or '-'}")
        if app.reactors:
            console.print(f"[green]reactors[/green]     {', '.join(app.reactor_names)}")
        if sink is not None:
            console.print(
                f"[green]mail[/green]         smtp://127.0.0.1:{sink.port}, mails in {sink.folder}/"
            )
        console.print(f"[green]stores[/green]       {settings.data_dir}/write.db, read.db")
        console.print(
            f"[green]settings[/green]     {env_file} (`set -a; . {env_file}; set +a` for other commands)"
        )
        if settings.auth.auth_disabled:
            console.print("[red]authentication is DISABLED (EVENTFOLD_AUTH_DISABLED=true)[/red]")
            auth = ""
        else:
            key_file = settings.data_dir / "dev.key"
            token = dev_key(settings.data_dir)
            console.print(f"[green]dev key[/green]      {token} (scope admin; {key_file})")
            auth = '-H "Authorization: Bearer $(cat ' + str(key_file) + ')" '
        hint = try_it(app, command_port, query_port, auth)
        if hint:
            console.print(hint, markup=False, highlight=False)
        console.print("\nCtrl-C stops everything.")
        try:
            await run_servers(servers, stop)
        finally:
            stop.set()
            await projector
            await reactors
            await managers
            if sink is not None:
                await asyncio.to_thread(sink.stop)
    finally:
        if broker is not None:
            broker.stop()
        console.print("stopped.")


async def start_mail_sink(app: App, data_dir: Path) -> MailSink | None:
    """A local SMTP server for the app's reactors, unless EVENTFOLD_SMTP_HOST names a real one.

    It sets EVENTFOLD_SMTP_HOST and EVENTFOLD_SMTP_PORT for the reactors of
    this process, which read them when they send.
    """
    if not app.reactors or os.environ.get("EVENTFOLD_SMTP_HOST"):
        return None
    from eventfold.broker import free_port
    from eventfold.cli.mail_sink import MailSink

    sink = MailSink(data_dir / "mail", free_port())
    await asyncio.to_thread(sink.start)
    os.environ["EVENTFOLD_SMTP_HOST"] = "127.0.0.1"
    os.environ["EVENTFOLD_SMTP_PORT"] = str(sink.port)
    return sink


def try_it(app: App, command_port: int, query_port: int, auth: str) -> str | None:
    """A curl session for the app's first command and the view that reads its stream."""
    if not app.aggregates:
        return None
    aggregate = app.aggregates[0]
    command_type, model = next(iter(aggregate.contract.commands.items()))
    body = orjson.dumps({"type": command_type, "data": example_data(model)}).decode()
    stream = aggregate.stream_type
    lines = [
        "\ntry (the command answers with a position; wait_for reads your write):",
        f"  POS=$(curl -s -X POST http://127.0.0.1:{command_port}/commands/{stream}/demo-1 {auth}\\",
        f"      -H 'content-type: application/json' -d '{body}' \\",
        "      | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"position\"])')",
    ]
    view = next((p for p in app.projections if p.stream_type == stream), None)
    if view is not None:
        lines.append(
            f'  curl -s {auth}"http://127.0.0.1:{query_port}/views/{view.name}/demo-1?wait_for=$POS"'
        )
        lines.append("  # each change as it is committed (Server-Sent Events; Ctrl-C to stop):")
        lines.append(f'  curl -N {auth}"http://127.0.0.1:{query_port}/views/{view.name}/demo-1/live"')
    return "\n".join(lines)


def example_data(model: type) -> dict[str, object]:
    """Data that satisfies a command model's required fields, for the curl hint."""
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    data: dict[str, object] = {}
    for name in schema.get("required", []):
        field = schema["properties"].get(name, {})
        kind = field.get("type")
        if kind == "integer":
            data[name] = max(1, int(field.get("minimum", field.get("exclusiveMinimum", 0) + 1)))
        elif kind == "number":
            data[name] = 1.0
        elif kind == "boolean":
            data[name] = True
        else:
            data[name] = "example"[: field.get("maxLength", 7)] or "x"
    return data
