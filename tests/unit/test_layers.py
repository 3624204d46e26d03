"""Every module of the shared plumbing is under the import contract that keeps it at the bottom."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = {"eventfold.cli", "eventfold.testing", "eventfold.migrate", "eventfold.migrations"}


def test_each_plumbing_module_is_forbidden_to_import_upwards() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [plumbing] = [c for c in config["contracts"] if c["name"].startswith("The shared plumbing")]
    modules = {
        f"eventfold.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "eventfold").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert modules - TOP == set(plumbing["source_modules"]), (
        "list new eventfold modules in the plumbing contract of pyproject.toml, or among TOP here"
    )
