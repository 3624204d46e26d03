"""The deploy files agree with the code they deploy.

Nothing here builds or runs an image; the files are parsed and checked against
the CLI, the settings classes and pyproject.toml, so a renamed command, setting
or port fails here instead of in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer.main
import yaml
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from eventfold import cli, runner
from eventfold.auth import load_keys
from eventfold.settings import (
    CommandApiSettings,
    DatabaseSettings,
    KafkaSettings,
    ProjectorSettings,
    QueryApiSettings,
    Settings,
)
from examples.bank.welcome import MailSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

API_SERVICES = ("command-api", "query-api")


def settings_classes() -> list[type[BaseSettings]]:
    """Settings and every concern it nests, so a new concern is picked up here too."""
    nested = [
        f.annotation
        for f in Settings.model_fields.values()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseSettings)
    ]
    return [Settings, *nested]


# --- reading the files -------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest of the line)

    def all(self, name: str) -> list[str]:
        return [rest for ins, rest in self.instructions if ins == name]

    def exec_form(self, name: str) -> list[str]:
        (rest,) = self.all(name)[-1:]
        value = json.loads(rest)
        assert isinstance(value, list), f"{name} must use the exec (JSON) form"
        return value


def read_dockerfile() -> Dockerfile:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ins, _, rest = line.partition(" ")
        instructions.append((ins.upper(), rest.strip()))
    return Dockerfile(instructions)


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def eventfold_compose_services() -> dict[str, dict[str, Any]]:
    """The services that run our image (the ones built from deploy/Dockerfile)."""
    return {name: svc for name, svc in compose_services().items() if "build" in svc}


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def k8s_workloads() -> list[dict[str, Any]]:
    return k8s_kind("Deployment") + k8s_kind("Job")


def k8s_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container."""
    for workload in k8s_workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield workload["metadata"]["name"], pod, container


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container sees: its envFrom ConfigMaps and Secrets, then env."""
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in k8s_kind("ConfigMap")}
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in k8s_kind("Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    return {k: str(v) for k, v in env.items()}


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    """The environment as Compose would set it with nothing exported in the shell."""
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate_unset(str(v)) for k, v in raw.items()}


def interpolate_unset(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` as if VAR were unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


# --- what the code defines ---------------------------------------------------


def setting_env_names() -> set[str]:
    names = set()
    for cls in settings_classes():
        for name, field in cls.model_fields.items():
            nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)
            if not nested:
                names.add("EVENTFOLD_" + name.upper())
    return names


def mail_env_names() -> set[str]:
    """The bank example's SMTP settings, which its reactor reads (the manifests deploy the bank)."""
    prefix = MailSettings.model_config.get("env_prefix", "")
    return {
        str(f.validation_alias) if isinstance(f.validation_alias, str) else prefix + name.upper()
        for name, f in MailSettings.model_fields.items()
    }


def settings_under(env: dict[str, str]) -> Settings:
    """The settings a process would read with exactly these EVENTFOLD_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return Settings()


def known_services() -> set[str]:
    """The names `eventfold serve` accepts: the runner's table, else the CLI's help."""
    table = getattr(runner, "SERVICES", None)
    if table is not None:
        return set(table)
    group: Any = typer.main.get_command(cli.app)
    serve = group.commands["serve"]
    (argument,) = [p for p in serve.params if p.name == "service"]
    return {name.strip() for name in argument.help.split("|")}


@dataclass(frozen=True)
class Invocation:
    path: tuple[str, ...]  # the command, e.g. ("topics", "create")
    params: dict[str, Any]


def parse_cli(args: list[str]) -> Invocation:
    """Parse `eventfold ARGS` the way the CLI would, without running anything."""
    cmd: Any = typer.main.get_command(cli.app)
    ctx = cmd.context_class(cmd, info_name="eventfold")
    rest = list(args)
    path: list[str] = []
    while hasattr(cmd, "commands"):
        assert rest, f"`eventfold {' '.join(args)}` names no command"
        name = rest.pop(0)
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"`eventfold {' '.join(args)}`: no command {name!r}"
        path.append(name)
        cmd = sub
        ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
    try:
        leaf = cmd.make_context(ctx.info_name, rest, parent=ctx.parent)
    except Exception as exc:
        pytest.fail(f"`eventfold {' '.join(args)}` does not parse: {exc}")
    return Invocation(tuple(path), dict(leaf.params))


def eventfold_calls(argv: list[str]) -> list[list[str]]:
    """The `eventfold` argument lists an argv runs: directly or in `sh -c "a && b"`."""
    if argv[:1] == ["eventfold"]:
        return [argv[1:]]
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, f"unexpected command line {argv}"
    calls = []
    for part in argv[2].split("&&"):
        words = shlex.split(part)
        assert words[:1] == ["eventfold"], f"{part!r} does not run eventfold"
        calls.append(words[1:])
    return calls


def as_list(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_argv(svc: dict[str, Any]) -> list[str]:
    image = read_dockerfile()
    if "entrypoint" in svc:  # overriding the entrypoint also drops the image's CMD
        return as_list(svc["entrypoint"]) + as_list(svc.get("command", []))
    return image.exec_form("ENTRYPOINT") + as_list(svc.get("command", image.exec_form("CMD")))


def k8s_argv(container: dict[str, Any]) -> list[str]:
    image = read_dockerfile()
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return image.exec_form("ENTRYPOINT") + as_list(container.get("args", image.exec_form("CMD")))


def served(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(service, serve's params) if this argv runs `eventfold serve SERVICE`."""
    calls = [parse_cli(call) for call in eventfold_calls(argv)]
    serves = [c for c in calls if c.path == ("serve",)]
    if not serves:
        return None
    (call,) = serves
    return call.params["service"], call.params


def listen_port(service: str, params: dict[str, Any], env: dict[str, str]) -> int:
    """The port the service listens on: --port, else the settings this env gives."""
    if params.get("port"):
        return int(params["port"])
    s = settings_under(env)
    port = {
        "command-api": s.command_api.command_port,
        "query-api": s.query_api.query_port,
        # The consuming services share the projector's health and metrics port setting.
        "projector": s.projector.projector_metrics_port,
        "reactors": s.projector.projector_metrics_port,
        "process-managers": s.projector.projector_metrics_port,
    }[service]
    assert port, f"{service} listens on no port (is EVENTFOLD_PROJECTOR_METRICS_PORT set?)"
    return port


def listen_host(service: str, params: dict[str, Any], env: dict[str, str]) -> str:
    s = settings_under(env)
    default = s.command_api.host if service == "command-api" else s.query_api.host
    return str(params.get("host") or default)


def container_side(port: str | int | dict[str, Any]) -> int:
    """The container port of a compose `ports`/`expose` entry."""
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).split("/")[0].rsplit(":", 1)[-1])


def test_every_settings_class_reads_eventfold_variables() -> None:
    # The variable names checked below are derived from this prefix.
    classes = settings_classes()
    named = {KafkaSettings, DatabaseSettings, CommandApiSettings, QueryApiSettings, ProjectorSettings}
    assert named <= set(classes)
    for cls in classes:
        assert cls.model_config.get("env_prefix") == "EVENTFOLD_", cls.__name__
        assert not cls.model_config.get("case_sensitive"), cls.__name__


# --- the image -----------------------------------------------------------------


def test_image_entrypoint_is_the_eventfold_script() -> None:
    image = read_dockerfile()
    assert image.exec_form("ENTRYPOINT") == ["eventfold"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["eventfold"].partition(":")
    assert (module, attr) == ("eventfold.cli", "app"), "the script no longer runs eventfold.cli:app"


def test_image_default_command_is_a_real_command() -> None:
    cmd = read_dockerfile().exec_form("CMD")
    assert cmd == ["serve", "command-api"]
    assert parse_cli(cmd).params["service"] in known_services()


def test_image_is_multi_stage_slim_python() -> None:
    bases = [rest.split()[0] for rest in read_dockerfile().all("FROM")]
    assert len(bases) >= 2
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = read_dockerfile().all("USER")
    assert users, "the image has no USER line, so it runs as root"
    user, _, group = users[-1].partition(":")
    # Numeric, so Kubernetes can check runAsNonRoot against the image itself.
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0), users[-1]


def top_level_packages() -> set[str]:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    return {
        d.name
        for d in REPO.iterdir()
        if (d / "__init__.py").is_file()
        and any(Path(d.name).match(p) for p in patterns)
        and d.name != "tests"
    }


def copied_sources() -> set[str]:
    sources: set[str] = set()
    for rest in read_dockerfile().all("COPY"):
        if "--from=" in rest:  # from another stage, not from the context
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        sources.update(w.rstrip("/").removeprefix("./") for w in words[:-1])
    return sources


def test_image_copies_every_package_and_the_build_metadata() -> None:
    packages = top_level_packages()
    assert {"eventfold", "command_api", "projector", "query_api", "schemas"} <= packages
    missing = (packages | {"pyproject.toml", "README.md"}) - copied_sources()
    assert not missing, f"deploy/Dockerfile does not copy {sorted(missing)}"


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ".venv" in rules or "*" in rules, "the virtualenv would be sent as build context"
    if "*" in rules:
        allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
        assert copied_sources() <= allowed, sorted(copied_sources() - allowed)


# --- compose -------------------------------------------------------------------


def test_compose_builds_the_image_from_the_repo_root() -> None:
    for name, svc in eventfold_compose_services().items():
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert context == REPO, name
        assert (context / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile", name


def test_compose_runs_the_expected_services() -> None:
    services = compose_services()
    assert {"kafka", "postgres", "migrate", "command-api", "projector", "query-api"} <= set(services)
    runs = {name: served(compose_argv(svc)) for name, svc in eventfold_compose_services().items()}
    assert {name: r[0] for name, r in runs.items() if r} == {
        "command-api": "command-api",
        "projector": "projector",
        "query-api": "query-api",
        "reactors": "reactors",
        "process-managers": "process-managers",
    }


@pytest.mark.parametrize(
    "name", ["migrate", "command-api", "projector", "query-api", "reactors", "process-managers"]
)
def test_compose_commands_are_real_cli_commands(name: str) -> None:
    svc = eventfold_compose_services()[name]
    for call in eventfold_calls(compose_argv(svc)):
        invocation = parse_cli(call)
        if invocation.path == ("serve",):
            assert invocation.params["service"] in known_services()


def test_compose_migrate_migrates_then_creates_topics_once_deps_are_healthy() -> None:
    svc = compose_services()["migrate"]
    calls = [parse_cli(c).path for c in eventfold_calls(compose_argv(svc))]
    assert calls == [("migrate",), ("topics", "create")]
    assert svc["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "kafka": {"condition": "service_healthy"},
        "kafka-2": {"condition": "service_healthy"},
        "kafka-3": {"condition": "service_healthy"},
    }
    assert svc.get("restart", "no") == "no"


@pytest.mark.parametrize("name", ["command-api", "projector", "query-api"])
def test_compose_services_start_after_a_successful_migration(name: str) -> None:
    depends = compose_services()[name]["depends_on"]
    assert depends["migrate"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("name", ["migrate", "command-api", "projector", "query-api"])
def test_compose_environment_names_real_settings(name: str) -> None:
    env = compose_env(compose_services()[name])
    ours = {k for k in env if k.startswith("EVENTFOLD_")}
    assert ours, f"{name} sets no EVENTFOLD_* variables"
    assert ours <= setting_env_names(), f"unknown settings: {sorted(ours - setting_env_names())}"
    settings = settings_under(env)  # the values must validate, too
    assert settings.kafka.kafka_bootstrap == "kafka:9092,kafka-2:9092,kafka-3:9092"
    assert settings.kafka.kafka_idempotence is True
    for url in (settings.db.write_db_url, settings.db.read_db_url):
        assert url.startswith("postgresql+asyncpg://"), url
    assert settings.auth.auth_disabled is False, "the deployment must not turn authentication off"
    load_keys(settings.auth)  # raises if the key list is not valid JSON entries


def test_compose_database_urls_match_the_postgres_service() -> None:
    pg = compose_env(compose_services()["postgres"])
    for name, svc in eventfold_compose_services().items():
        env = compose_env(svc)
        for var in ("EVENTFOLD_WRITE_DB_URL", "EVENTFOLD_READ_DB_URL"):
            url = make_url(env[var])
            assert url.host == "postgres", (name, var)
            assert url.database == pg["POSTGRES_DB"], (name, var)
            assert url.username == pg.get("POSTGRES_USER", "postgres"), (name, var)
            assert url.password == pg["POSTGRES_PASSWORD"], (name, var)


@pytest.mark.parametrize("name", ["command-api", "projector", "query-api"])
def test_compose_ports_and_healthchecks_match_the_settings(name: str) -> None:
    svc = compose_services()[name]
    run = served(compose_argv(svc))
    assert run is not None
    service, params = run
    env = compose_env(svc)
    port = listen_port(service, params, env)
    if service in API_SERVICES:
        assert listen_host(service, params, env) == "0.0.0.0", "unreachable from other containers"
    probe = " ".join(as_list(svc["healthcheck"]["test"]))
    assert re.findall(r"https?://[^/:]+:(\d+)/healthz", probe) == [str(port)], probe
    exposed = [container_side(p) for p in svc.get("ports", []) + svc.get("expose", [])]
    assert exposed, f"{name} exposes no port"
    assert set(exposed) == {port}, (exposed, port)


def test_compose_replicated_services_publish_no_fixed_host_port() -> None:
    for name, svc in compose_services().items():
        if svc.get("deploy", {}).get("replicas", 1) <= 1:
            continue
        for entry in svc.get("ports", []):
            parts = str(entry).split("/")[0].split(":")
            host_port = parts[-2] if len(parts) >= 2 else ""
            assert host_port == "" or "-" in host_port, (
                f"{name} has replicas but publishes fixed host port {host_port}"
            )


def test_compose_replica_counts() -> None:
    services = compose_services()
    assert services["command-api"]["deploy"]["replicas"] == 2
    assert services["projector"]["deploy"]["replicas"] == 2
    partitions = settings_under(compose_env(services["projector"])).kafka.partitions
    assert services["projector"]["deploy"]["replicas"] <= partitions


def test_compose_kafka_is_three_kraft_nodes_with_replicated_topics_and_unlimited_retention() -> None:
    services = compose_services()
    nodes = [services[n] for n in ("kafka", "kafka-2", "kafka-3")]
    envs = [compose_env(n) for n in nodes]
    assert {n["image"] for n in nodes} == {"apache/kafka:4.1.2"}
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs}
    assert len(voters) == 1 and len(voters.pop().split(",")) == 3
    for env in envs:
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        # Replays read from offset 0: nothing may expire.
        assert env["KAFKA_LOG_RETENTION_MS"] == "-1"
    assert "kafka-broker-api-versions.sh" in " ".join(as_list(nodes[0]["healthcheck"]["test"]))
    advertised = ",".join(e["KAFKA_ADVERTISED_LISTENERS"] for e in envs)
    for name, svc in eventfold_compose_services().items():
        settings = settings_under(compose_env(svc))
        assert (settings.kafka.replication_factor, settings.kafka.min_insync_replicas) == (3, 2)
        for server in settings.kafka.kafka_bootstrap.split(","):
            assert f"//{server}" in advertised, (name, server, advertised)


def test_compose_postgres_is_16_with_a_healthcheck() -> None:
    pg = compose_services()["postgres"]
    assert str(pg["image"]).split(":")[1].startswith("16")
    assert "pg_isready" in " ".join(as_list(pg["healthcheck"]["test"]))


# --- kubernetes ------------------------------------------------------------------


def test_k8s_manifests_cover_every_part() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_documents())
    assert kinds == [
        ("ConfigMap", "eventfold-config"),
        ("Deployment", "eventfold-command-api"),
        ("Deployment", "eventfold-process-managers"),
        ("Deployment", "eventfold-projector"),
        ("Deployment", "eventfold-query-api"),
        ("Deployment", "eventfold-reactors"),
        ("Job", "eventfold-migrate"),
        ("Secret", "eventfold-secrets"),
        ("Service", "eventfold-command-api"),
        ("Service", "eventfold-query-api"),
    ]
    for _, doc in k8s_documents():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]


def test_k8s_commands_are_real_cli_commands() -> None:
    runs: dict[str, str | None] = {}
    for workload, _, container in k8s_containers():
        argv = k8s_argv(container)
        for call in eventfold_calls(argv):
            invocation = parse_cli(call)
            if invocation.path == ("serve",):
                assert invocation.params["service"] in known_services(), workload
        run = served(argv)
        runs[workload] = run[0] if run else None
    assert runs == {
        "eventfold-command-api": "command-api",
        "eventfold-projector": "projector",
        "eventfold-query-api": "query-api",
        "eventfold-reactors": "reactors",
        "eventfold-process-managers": "process-managers",
        "eventfold-migrate": None,
    }
    (job,) = k8s_kind("Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    calls = [parse_cli(c).path for c in eventfold_calls(k8s_argv(container))]
    assert calls == [("migrate",), ("topics", "create")]


def test_k8s_config_and_secret_name_real_settings() -> None:
    (config,) = k8s_kind("ConfigMap")
    (secret,) = k8s_kind("Secret")
    names = set(config["data"]) | set(secret["stringData"])
    assert names <= setting_env_names(), sorted(names - setting_env_names())
    # Credentials live in the Secret only.
    assert not {"EVENTFOLD_WRITE_DB_URL", "EVENTFOLD_READ_DB_URL"} & set(config["data"])
    assert {"EVENTFOLD_WRITE_DB_URL", "EVENTFOLD_READ_DB_URL"} <= set(secret["stringData"])
    assert "data" not in secret
    assert "replace" in (K8S / "secret.yaml").read_text().lower()


def test_k8s_env_sources_exist_and_validate() -> None:
    maps = {m["metadata"]["name"] for m in k8s_kind("ConfigMap")}
    secrets = {s["metadata"]["name"] for s in k8s_kind("Secret")}
    for workload, _, container in k8s_containers():
        sources = container.get("envFrom", [])
        assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} == maps
        assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} == secrets
        env = k8s_env(container)
        extra = {k for k in env if k.startswith("EVENTFOLD_")} - setting_env_names() - mail_env_names()
        assert not extra, (workload, sorted(extra))
        settings = settings_under(env)
        assert settings.db.write_db_url.startswith("postgresql+asyncpg://"), workload
        assert settings.auth.auth_disabled is False, workload
        load_keys(settings.auth)


def named_ports(container: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def test_k8s_ports_and_probes_match_the_settings() -> None:
    services = k8s_kind("Service")
    checked = set()
    for workload, _, container in k8s_containers():
        run = served(k8s_argv(container))
        if run is None:
            continue
        service, params = run
        env = k8s_env(container)
        port = listen_port(service, params, env)
        if service in API_SERVICES:
            assert listen_host(service, params, env) == "0.0.0.0", workload
        ports = named_ports(container)
        assert set(ports.values()) == {port}, (workload, ports, port)
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (workload, probe)
            assert ports.get(get["port"]) == port, (workload, probe, get["port"])
        deployment = next(d for d in k8s_kind("Deployment") if d["metadata"]["name"] == workload)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        fronting = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
        if service in API_SERVICES:
            assert len(fronting) == 1, (workload, fronting)
            for sp in fronting[0]["spec"]["ports"]:
                assert ports.get(sp.get("targetPort", sp["port"])) == port, (workload, sp)
        else:
            assert not fronting, workload
        checked.add(service)
    assert checked == {"command-api", "query-api", "projector", "reactors", "process-managers"}


def test_k8s_replicas_and_partitions() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s_kind("Deployment")}
    assert deployments["eventfold-command-api"]["spec"]["replicas"] == 2
    projector = deployments["eventfold-projector"]
    assert projector["spec"]["replicas"] == 2
    container = projector["spec"]["template"]["spec"]["containers"][0]
    partitions = settings_under(k8s_env(container)).kafka.partitions
    assert projector["spec"]["replicas"] <= partitions, "extra projector replicas would idle"
    assert 1 < deployments["eventfold-reactors"]["spec"]["replicas"] <= partitions
    # One process-manager process at a time, also during a rollout.
    managers = deployments["eventfold-process-managers"]["spec"]
    assert managers["replicas"] == 1 and managers["strategy"] == {"type": "Recreate"}


def test_k8s_pods_run_as_the_image_user_and_not_root() -> None:
    image_uid = int(read_dockerfile().all("USER")[-1].partition(":")[0])
    for workload, pod, container in k8s_containers():
        merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert merged.get("runAsNonRoot") is True, workload
        assert merged.get("runAsUser", image_uid) == image_uid, workload
        assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False


def test_k8s_containers_have_requests_and_limits() -> None:
    for workload, _, container in k8s_containers():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (workload, kind)


def test_grafana_dashboard_charts_only_metrics_we_export() -> None:
    """Every metric the dashboard queries exists in eventfold.observability, and vice versa."""
    import json
    import re

    from prometheus_client import REGISTRY

    import eventfold.observability  # noqa: F401  (registers the metrics)

    dashboard = json.loads((REPO / "deploy" / "grafana" / "eventfold-dashboard.json").read_text())
    queried = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"eventfold_[a-z_]+", target["expr"])
    }
    exported = {m.name for m in REGISTRY.collect() if m.name.startswith("eventfold_")}
    assert queried <= exported, queried - exported
    assert exported <= queried, f"metrics without a panel: {exported - queried}"
