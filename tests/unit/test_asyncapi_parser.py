"""The AsyncAPI documents pass the official parser, which refuses broken ones.

`scripts/validate-asyncapi` installs @asyncapi/parser (pinned, with its whole
tree, by scripts/asyncapi-parser/package-lock.json) into a cache outside the
repository on first use, then prints one JSON line per diagnostic and exits 1
if any document has one of error severity. The documents go through one run of
it, since starting the parser is most of its cost.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventfold.kafka import asyncapi_cluster
from eventfold.settings import KafkaSettings
from schemas.asyncapi import document
from tests.support.bank import bank
from tests.support.counter import with_counter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "validate-asyncapi"
CHECKED_IN = ROOT / "schemas" / "asyncapi.json"

SECURE = KafkaSettings.model_construct(
    kafka_bootstrap="k1:9093,k2:9093",
    kafka_security_protocol="SASL_SSL",
    kafka_sasl_mechanism="SCRAM-SHA-256",
    partitions=12,
    replication_factor=3,
    min_insync_replicas=2,
)


@dataclass(frozen=True)
class Run:
    status: int
    diagnostics: list[dict[str, Any]]
    output: str

    def errors(self, path: Path) -> set[tuple[str, str]]:
        return {
            (d["code"], d["path"])
            for d in self.diagnostics
            if d["document"] == str(path) and d["severity"] == "error"
        }


def validate(*paths: Path) -> Run:
    done = subprocess.run([str(SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=900)
    diagnostics = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return Run(done.returncode, diagnostics, done.stdout + done.stderr)


def broken() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(CHECKED_IN.read_bytes())
    doc["channels"]["accountEvents"]["bindings"]["kafka"]["partitions"] = 0
    doc["channels"]["accountEvents"]["messages"]["Deposited.v2"] = {"$ref": "#/components/messages/nope"}
    return doc


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Run]:
    folder = tmp_path_factory.mktemp("asyncapi")
    paths = {"checked-in": CHECKED_IN}
    for name, doc in [
        (
            "secure",
            document(
                [a.contract for a in with_counter()],
                asyncapi_cluster(SECURE),
                version="x",
                schema_root=bank.schema_dir,
            ),
        ),
        ("broken", broken()),
    ]:
        paths[name] = folder / f"{name}.json"
        paths[name].write_bytes(orjson.dumps(doc))
    return paths, validate(*paths.values())


@pytest.mark.parametrize("name", ["checked-in", "secure"])
def test_the_generated_documents_are_valid_asyncapi(
    name: str, documents: tuple[dict[str, Path], Run]
) -> None:
    paths, run = documents
    assert run.errors(paths[name]) == set(), run.output
    assert f"{paths[name]}: valid AsyncAPI 3.0.0" in run.output


def test_the_parser_refuses_an_invalid_document(documents: tuple[dict[str, Path], Run]) -> None:
    paths, run = documents
    assert run.status == 1, run.output
    errors = run.errors(paths["broken"])
    assert any(code == "invalid-ref" for code, _ in errors), run.output
    assert any(path.endswith("channels/accountEvents/bindings/kafka/partitions") for _, path in errors), (
        run.output
    )


def test_valid_documents_alone_pass() -> None:
    run = validate(CHECKED_IN)
    assert (run.status, run.errors(CHECKED_IN)) == (0, set()), run.output
