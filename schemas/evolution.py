"""Event schema history: JSON Schemas of every event version, and the check.

An app's schema folder (`App.schema_dir`, e.g. `examples/bank/schemas/`) holds
`<stream_type>/<Event>.v<N>.json`: the shape of each event version ever
released. Records in Kafka are never rewritten, so a released version's shape
may only change compatibly (a new optional field); any other change needs a new
`schema_version` and an upcaster from the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.registry import StreamContract


@dataclass(frozen=True)
class Finding:
    event: str
    problem: str
    fatal: bool

    def __str__(self) -> str:
        return f"{'error' if self.fatal else 'note '}: {self.event}: {self.problem}"


def schema_path(root: Path, stream_type: str, event: str, version: int) -> Path:
    return root / stream_type / f"{event}.v{version}.json"


def current_schema(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def export(contracts: Iterable[StreamContract], root: Path) -> list[Path]:
    """Write the current version of every event; earlier versions stay as they are."""
    written = []
    for c in contracts:
        for name, model in sorted(c.events.items()):
            path = schema_path(root, c.stream_type, name, model.schema_version)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = orjson.dumps(current_schema(model), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            if not path.exists() or path.read_bytes() != data + b"\n":
                path.write_bytes(data + b"\n")
                written.append(path)
    return written


def check(contracts: Iterable[StreamContract], root: Path) -> list[Finding]:
    findings: list[Finding] = []
    for c in contracts:
        for name, model in sorted(c.events.items()):
            findings.extend(_check_event(c, name, model, root))
    return findings


def _check_event(c: StreamContract, name: str, model: Any, root: Path) -> list[Finding]:
    findings: list[Finding] = []
    label = f"{c.stream_type}.{name} v{model.schema_version}"
    for v in range(1, model.schema_version):
        if (name, v) not in c.upcasters:
            findings.append(Finding(label, f"no upcaster from v{v} to v{v + 1}", True))
    path = schema_path(root, c.stream_type, name, model.schema_version)
    if not path.exists():
        earlier = schema_path(root, c.stream_type, name, model.schema_version - 1)
        if model.schema_version > 1 and not earlier.exists():
            findings.append(Finding(label, f"no recorded schema for v{model.schema_version - 1}", True))
        findings.append(Finding(label, "new version not exported yet: run `eventfold schemas export`", True))
        return findings
    recorded = orjson.loads(path.read_bytes())
    for problem in incompatibilities(recorded, current_schema(model)):
        findings.append(
            Finding(
                label,
                f"{problem}; records of v{model.schema_version} in Kafka would no longer load: "
                f"raise schema_version to {model.schema_version + 1} and add an upcaster",
                True,
            )
        )
    if not findings and recorded != current_schema(model):
        findings.append(
            Finding(label, "compatible change not recorded: run `eventfold schemas export`", False)
        )
    return findings


def incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Changes that would make a stored record of the old shape fail the new model."""
    out = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    new_required = set(new.get("required", []))
    for field, spec in old_props.items():
        if field not in new_props:
            out.append(f"field {field!r} was removed")
        elif _type(spec) != _type(new_props[field]):
            out.append(f"field {field!r} changed type {_type(spec)} -> {_type(new_props[field])}")
    for field in new_required:
        if field not in set(old.get("required", [])):
            out.append(f"field {field!r} is required but old records may lack it")
    return out


def _type(spec: dict[str, Any]) -> Any:
    if "anyOf" in spec:
        return sorted(str(_type(s)) for s in spec["anyOf"])
    return spec.get("type", spec.get("$ref"))
