"""The benchmark's broker: chosen like the tests' and the chaos suite's, configured by its flags.

Nothing is started here: the settings and the child environment a run would
use are read off a `BenchEnv` built for each broker.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench import report as report_module
from bench.__main__ import cli
from bench.env import BenchEnv, default_broker
from bench.report import Report


@pytest.fixture
def bench_env(request: pytest.FixtureRequest) -> Iterator[BenchEnv]:
    env = BenchEnv(partitions=4, broker=request.param)
    try:
        yield env
    finally:
        shutil.rmtree(env.workdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("bench_env", "idempotence", "from_fetch"),
    [("apache", "true", "false"), ("tansu", "false", "true")],
    indirect=["bench_env"],
)
def test_settings_and_child_env_follow_the_broker_flags(
    bench_env: BenchEnv, idempotence: str, from_fetch: str
) -> None:
    kafka = bench_env.kafka("p")
    assert kafka.kafka_bootstrap == bench_env.broker.bootstrap
    assert kafka.kafka_idempotence is bench_env.broker.idempotence
    assert kafka.kafka_highwater_from_fetch is bench_env.broker.highwater_from_fetch
    env = bench_env.service_env("p", "postgresql://w", "postgresql://r")
    assert env["EVENTFOLD_KAFKA_BOOTSTRAP"] == bench_env.broker.bootstrap
    assert env["EVENTFOLD_KAFKA_IDEMPOTENCE"] == idempotence
    assert env["EVENTFOLD_KAFKA_HIGHWATER_FROM_FETCH"] == from_fetch
    # A broker that holds each fetch for its whole wait gets a short one.
    assert kafka.kafka_fetch_max_wait_ms == bench_env.broker.fetch_max_wait_ms
    assert env["EVENTFOLD_KAFKA_FETCH_MAX_WAIT_MS"] == str(bench_env.broker.fetch_max_wait_ms)


@pytest.mark.parametrize("bench_env", ["apache"], indirect=True)
def test_apache_is_three_nodes(bench_env: BenchEnv) -> None:
    assert bench_env.broker.kind == "apache"
    assert len(bench_env.broker.bootstrap.split(",")) == 3


def test_environment_chooses_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTFOLD_BENCH_BROKER", "tansu")
    assert default_broker() == "tansu"
    monkeypatch.setenv("EVENTFOLD_BENCH_BROKER", "apache")
    assert default_broker() == "apache"
    monkeypatch.setenv("EVENTFOLD_BENCH_BROKER", "kafka")
    with pytest.raises(ValueError, match="apache or tansu"):
        default_broker()


def test_unknown_broker_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["--quick", "--broker", "redpanda"])
    assert exc.value.code == 2
    assert "--broker" in capsys.readouterr().err


def _report(kind: str, mode: str = "quick") -> Report:
    rep = Report(mode)
    rep.data["broker"] = {
        "kind": kind,
        "name": "Apache Kafka" if kind == "apache" else "Tansu (embedded)",
        "version": "4.1.2" if kind == "apache" else "0.6.0",
        "nodes": 3 if kind == "apache" else 1,
    }
    return rep


def test_results_name_a_run_on_tansu_and_keep_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "RESULTS", tmp_path)
    apache = [p.name for p in _report("apache").write()]
    tansu = [p.name for p in _report("tansu").write()]
    partial = [p.name for p in _report("tansu").write("raw")]
    assert apache[1] == "latest.json" and apache[0].endswith("-quick.json")
    assert tansu[1] == "latest-tansu.json" and tansu[0].endswith("-quick-tansu.json")
    assert partial[0].endswith("-quick-tansu-only-raw.json")
    assert orjson.loads((tmp_path / "latest.json").read_bytes())["broker"]["kind"] == "apache"
    assert orjson.loads((tmp_path / "latest-tansu.json").read_bytes())["broker"]["kind"] == "tansu"


def test_summary_title_names_the_broker() -> None:
    assert str(_report("apache").table().title).endswith("on Apache Kafka 4.1.2, 3 nodes")
    assert str(_report("tansu", "full").table().title).endswith("on Tansu (embedded) 0.6.0, 1 node")


def test_profile_without_py_spy_is_a_usage_error_before_anything_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.__main__ as bench_main

    monkeypatch.setattr(bench_main, "py_spy", lambda: None)
    with pytest.raises(SystemExit) as exc:
        cli(["--quick", "--broker", "tansu", "--profile"])
    assert exc.value.code == 2
    assert "--profile needs py-spy" in capsys.readouterr().err
