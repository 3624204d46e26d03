"""`eventfold new NAME`: the package it writes passes its own tests and is served at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_user_app import EVENTFOLD, dev_serving, user_env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


async def test_new_writes_a_package_that_tests_and_serves(tmp_path: Path) -> None:
    env = user_env(tmp_path, "tally:app")
    made = await asyncio.to_thread(_run, [EVENTFOLD, "new", "tally"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "tally" / "app.py").exists()
    # Its own tests pass as written, in the user's folder, with the user's pytest settings (none).
    tested = await asyncio.to_thread(
        _run, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tally"], env, tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout, tested.stdout
    # A second time, the folder exists: one line, exit 1, nothing overwritten.
    again = await asyncio.to_thread(_run, [EVENTFOLD, "new", "tally"], env, tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = await asyncio.to_thread(_run, [EVENTFOLD, "new", "Not-A-Name"], env, tmp_path)
    assert bad.returncode == 1 and "is not a package name" in bad.stderr

    async with dev_serving(env, tmp_path, "tally") as dev:
        r = await dev.commands.post(
            "/commands/task/t-1", json={"type": "OpenTask", "data": {"title": "ship"}}
        )
        assert r.status_code == 200, r.text
        done = await dev.commands.post("/commands/task/t-1", json={"type": "CompleteTask", "data": {}})
        assert done.status_code == 200, done.text
        view = await dev.queries.get(
            "/views/tasks/t-1", params={"wait_for": done.json()["position"], "wait_timeout": 30}
        )
        assert view.status_code == 200, view.text
        assert view.json() == {"id": "t-1", "version": 2, "title": "ship", "done": True}
        page = (await dev.queries.get("/views/tasks", params={"done": "true"})).json()
        assert [d["id"] for d in page["items"]] == ["t-1"]
