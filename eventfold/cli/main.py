"""The `eventfold` command line.

Every failure ends in one short message on stderr and exit code 1: failures a
user can fix (an unmigrated or unreachable store, an unreachable broker, an
unknown name) are explained by `_run` through `eventfold.cli.errors`, anything
else is summarised by `_App` with a pointer to its traceback (`--debug` or
EVENTFOLD_DEBUG=1).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from eventfold.app import App
from eventfold.cli.errors import USER_ERRORS, explain, explain_settings, one_line, redact
from eventfold.cli.loading import AppLoadError, load_app
from eventfold.cli.members import PARENT_FD_OPTION
from eventfold.settings import Settings, get_settings

T = TypeVar("T")
_DEBUG_ENV = "EVENTFOLD_DEBUG"


def _debugging() -> bool:
    return os.environ.get(_DEBUG_ENV, "").lower() in ("1", "true", "yes")


class _App(typer.Typer):
    """Typer, with an unexpected exception summarised in one line unless debugging."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if _debugging():
                raise
            bad_setting = str(exc) if isinstance(exc, AppLoadError) else explain_settings(exc)
            if bad_setting is not None:
                _fail(bad_setting)
            else:
                console.print(
                    f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(one_line(exc))}",
                    soft_wrap=True,
                )
                console.print(f"(run with --debug or {_DEBUG_ENV}=1 for the traceback)", soft_wrap=True)
            sys.exit(1)


app = _App(no_args_is_help=True, help="eventfold: Kafka-backed event sourcing and CQRS.")
topics_app = typer.Typer(no_args_is_help=True, help="Manage the Kafka topics of the registry.")
app.add_typer(topics_app, name="topics")
schemas_app = typer.Typer(no_args_is_help=True, help="Event schema history (the app's schema_dir).")
app.add_typer(schemas_app, name="schemas")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for the command and query APIs.")
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    # soft_wrap: one line whatever the terminal's width, so scripts can grep it.
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=1)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
    app_: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE:ATTRIBUTE",
            help="The App to serve (default EVENTFOLD_APP, else the bank example examples.bank:app).",
        ),
    ] = None,
) -> None:
    """eventfold: Kafka-backed event sourcing and CQRS."""
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # replay's worker processes inherit it
    if app_ is not None:
        os.environ["EVENTFOLD_APP"] = app_  # so do the services `dev` starts
        get_settings.cache_clear()


def current_app() -> App:
    """The App these settings name, loaded once."""
    return load_app(get_settings().app)


def _run(
    main: Coroutine[Any, Any, T],
    settings: Settings,
    *,
    store: Literal["read", "write"] | None = None,
    fast: bool = False,
) -> T:
    """Run a command's coroutine; a failure the user can fix becomes a one-line error."""
    import logging

    if not _debugging():
        # aiokafka logs every failed connection attempt; the one error line below says it once.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if fast:
            from eventfold.runner import run_fast

            return run_fast(main, heap_trim_interval_s=settings.heap_trim_interval_s)
        return asyncio.run(main)
    except Exception as exc:
        failure = exc
    url = {"read": settings.db.read_db_url, "write": settings.db.write_db_url}.get(store or "")
    message = explain(failure, store=store, db_url=url, bootstrap=settings.kafka.kafka_bootstrap)
    if message is None and isinstance(failure, USER_ERRORS):
        message = str(failure)
    if message is None or _debugging():
        raise failure
    raise _fail(message) from None


@app.command()
def migrate(
    write: Annotated[bool, typer.Option(help="Migrate the write store.")] = True,
    read: Annotated[bool, typer.Option(help="Migrate the read store.")] = True,
) -> None:
    """Apply the Alembic migrations to the write and read stores."""
    from eventfold.migrate import upgrade

    settings = get_settings()

    if write:
        _run(upgrade(settings.db.write_db_url, "write"), settings, store="write")
        console.print(f"write store migrated: {redact(settings.db.write_db_url)}")
    if read:
        _run(upgrade(settings.db.read_db_url, "read"), settings, store="read")
        console.print(f"read store migrated: {redact(settings.db.read_db_url)}")


@topics_app.command("create")
def topics_create() -> None:
    """Create one topic per registered stream type, with the configured partitions."""
    from eventfold.kafka import create_topics

    settings = get_settings()
    topics = current_app().topics(settings.kafka)
    try:
        created = asyncio.run(create_topics(settings.kafka, topics))
    except Exception as exc:
        raise _fail(f"cannot reach Kafka at {settings.kafka.kafka_bootstrap}: {exc!r}") from None
    for name in topics:
        console.print(f"{'created' if name in created else 'exists '} {name}")


@keys_app.command("create")
def keys_create(
    key_id: Annotated[str, typer.Argument(help="A short name: lowercase letters, digits, '-'.")],
    scope: Annotated[list[str], typer.Option(help="commands:write, read or admin; repeatable.")],
    expires_in_days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
) -> None:
    """Make a new API key: prints the token once, and the entry to configure."""
    from datetime import UTC, datetime, timedelta

    import orjson
    from pydantic import ValidationError

    from eventfold.auth import new_key

    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        token, entry = new_key(key_id, scope, expires)
    except ValidationError as exc:
        raise _fail(exc.errors()[0]["msg"]) from None
    console.print("token (shown once; give it to the client):")
    typer.echo(token)
    console.print("entry (add it to the JSON list in EVENTFOLD_API_KEYS or EVENTFOLD_API_KEYS_FILE):")
    typer.echo(orjson.dumps(entry.model_dump(mode="json")).decode(), err=True)


@schemas_app.command("export")
def schemas_export() -> None:
    """Record the JSON Schema of every current event version in the app's schema_dir."""
    from schemas.evolution import export

    served = current_app()
    written = export(served.contracts, _schema_dir(served))
    for path in written:
        console.print(f"wrote {path}")
    if not written:
        console.print("every event version is already recorded")


@schemas_app.command("check")
def schemas_check() -> None:
    """Fail if an event changed incompatibly without a new schema version and upcaster."""
    from schemas.evolution import check

    served = current_app()
    findings = check(served.contracts, _schema_dir(served))
    for f in findings:
        console.print(str(f))
    if any(f.fatal for f in findings):
        raise _fail("event schemas changed incompatibly (see above)")
    console.print("event schemas: compatible with every recorded version")


def _schema_dir(served: App) -> Path:
    if served.schema_dir is None:
        raise _fail(f"app {served.name!r} declares no schema_dir to keep its event schema history in")
    return served.schema_dir


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Every projection's state, offsets, lag and dead letters (as GET /projections)."""
    from eventfold.cli.status import gather, render

    # An unreachable broker shows as "?" lag, not as an error.
    settings = get_settings()
    report = _run(gather(settings, current_app()), settings, store="read")
    if as_json:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        render(report, Console())


def asyncapi_document(served: App, settings: Settings) -> str:
    """The AsyncAPI document of an app's topics as JSON text, stable for diffing."""
    import orjson

    from eventfold import __version__
    from eventfold.kafka import asyncapi_cluster
    from schemas.asyncapi import document

    cluster = asyncapi_cluster(settings.kafka)
    doc = document(served.contracts, cluster, version=__version__, schema_root=served.schema_dir)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@app.command()
def asyncapi(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the AsyncAPI 3 document of the app's topics, generated from its contracts."""
    text = asyncapi_document(current_app(), get_settings())
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
        console.print(f"wrote {output}")


@app.command()
def serve(
    service: Annotated[
        str,
        typer.Argument(help="command-api | query-api | projector | publisher | reactors | process-managers"),
    ],
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (defaults from settings).")] = None,
    projection: Annotated[
        str | None, typer.Option(help="projector only: run this projection (default: all).")
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="projector only: processes sharing the partitions in one consumer group "
            "(default EVENTFOLD_PROJECTOR_PROCESSES: one per core, at most 4, on PostgreSQL; one on SQLite).",
        ),
    ] = None,
    parent_fd: Annotated[int | None, typer.Option(PARENT_FD_OPTION, hidden=True)] = None,
) -> None:
    """Run one service in the foreground (what the container image runs)."""
    from eventfold.cli.serve import serve_one

    served = current_app()
    try:
        from eventfold.observability import configure_logging

        configure_logging(os.environ.get("EVENTFOLD_LOG_LEVEL", "INFO"))
        from eventfold.runner import run_fast

        settings = get_settings()
        code = run_fast(
            serve_one(
                settings,
                served,
                service,
                host=host,
                port=port,
                projection=projection,
                processes=processes,
                parent_fd=parent_fd,
            ),
            heap_trim_interval_s=settings.heap_trim_interval_s,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if code:
        raise typer.Exit(code=code)


@app.command()
def replay(
    name: Annotated[str, typer.Argument(help="A projection, or with --write-side a stream type.")],
    write_side: Annotated[
        bool, typer.Option("--write-side", help="Refill the write store's stream heads instead.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Processes sharing the partitions (default EVENTFOLD_PROJECTOR_REPLAY_WORKERS, "
            "else one per core up to 4; always 1 on SQLite).",
        ),
    ] = None,
) -> None:
    """Rebuild a projection from offset 0 (the live projector pauses meanwhile)."""
    from eventfold.cli.replay import run_replay

    settings = get_settings()
    main = run_replay(settings, current_app(), name, write_side=write_side, console=console, workers=workers)
    _run(main, settings, store="write" if write_side else "read", fast=True)


@app.command()
def rebuild(
    name: Annotated[str, typer.Argument(help="The projection to rebuild.")],
) -> None:
    """Rebuild a projection beside the live one and swap it in (no downtime)."""
    from eventfold.cli.rebuild import run_rebuild

    settings = get_settings()
    _run(run_rebuild(settings, current_app(), name, console=console), settings, store="read", fast=True)


dlq_app = typer.Typer(help="Inspect and re-drive records a projection or reactor could not handle.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    projection: Annotated[
        str | None, typer.Option(help="Only this projection's (or reactor's) failures.")
    ] = None,
) -> None:
    """List recorded failures: poison records, version gaps, reactors' dead letters and held-back events."""
    from eventfold.cli.dlq import run_list

    settings = get_settings()
    _run(run_list(settings, current_app(), projection, console=console), settings, store="read")


@dlq_app.command("retry")
def dlq_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Failure ids (see `dlq list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Retry every recorded failure.")] = False,
    projection: Annotated[
        str | None, typer.Option(help="Only this projection's (or reactor's) failures.")
    ] = None,
) -> None:
    """Re-apply recorded failures once their cause is fixed; those that still fail stay."""
    from eventfold.cli.dlq import run_retry

    if not ids and not all_:
        raise _fail("give failure ids or --all")
    settings = get_settings()
    main = run_retry(settings, current_app(), projection, None if all_ else list(ids or []), console=console)
    _run(main, settings, store="read")


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The package to write: lowercase letters, digits, '_'.")],
    directory: Annotated[Path, typer.Option(help="Where to write it.")] = Path("."),
) -> None:
    """Write a package with one aggregate, one projection and their tests, ready to serve."""
    from eventfold.cli.scaffold import ScaffoldError, write_package

    try:
        written = write_package(name, directory)
    except ScaffoldError as exc:
        raise _fail(str(exc)) from None
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: `pytest {name}` and `EVENTFOLD_APP={name}:app eventfold dev` in {directory}")


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite stores live.")] = Path(".eventfold"),
    command_port: Annotated[int, typer.Option(help="Command API port.")] = 8000,
    query_port: Annotated[int, typer.Option(help="Query API port.")] = 8001,
    kafka_port: Annotated[int, typer.Option(help="Port of the local broker (its first node).")] = 9092,
    broker: Annotated[
        str,
        typer.Option(
            help="tansu: the embedded broker (starts in a second, in memory); "
            "apache: a 3-node Apache Kafka cluster (needs Java and Maven)."
        ),
    ] = "tansu",
) -> None:
    """Run the whole system on this machine: broker, SQLite stores, APIs, projector."""
    if broker not in ("tansu", "apache"):
        raise _fail(f"--broker must be tansu or apache, not {broker!r}")
    from eventfold.cli.dev import run_dev

    served = current_app()
    external = os.environ.get("EVENTFOLD_KAFKA_BOOTSTRAP")
    try:
        from eventfold.observability import configure_logging

        configure_logging(os.environ.get("EVENTFOLD_LOG_LEVEL", "WARNING"), json=False)
        from eventfold.runner import run_fast

        run_fast(
            run_dev(served, data_dir, command_port, query_port, kafka_port, external, broker),
            heap_trim_interval_s=get_settings().heap_trim_interval_s,
        )
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()
