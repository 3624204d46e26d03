"""`eventfold new NAME`: a package with one aggregate, one projection and their tests.

What it writes runs at once (`EVENTFOLD_APP=NAME:app eventfold dev`) and its
tests pass (`pytest NAME`); a team then edits the domain in place.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_FILES: dict[str, str] = {
    "__init__.py": '''"""{name}: an event-sourced domain served by eventfold.

Serve it with `EVENTFOLD_APP={name}:app eventfold dev`; test it with `pytest {name}`.
"""

from {name}.app import app

__all__ = ["app"]
''',
    "contracts.py": '''"""The `task` stream: the commands it accepts and the events it records."""

from __future__ import annotations

from pydantic import Field

from eventfold import Command, Event, declare_stream


class OpenTask(Command):
    title: str = Field(min_length=1, max_length=200)


class CompleteTask(Command):
    pass


class TaskOpened(Event):
    title: str = Field(max_length=200)


class TaskCompleted(Event):
    pass


TASK = declare_stream("task", commands=[OpenTask, CompleteTask], events=[TaskOpened, TaskCompleted])
''',
    "domain.py": '''"""The task aggregate: pure decide and evolve, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from eventfold import Aggregate, Command, Event, Rejected, replace
from {name}.contracts import TASK, CompleteTask, OpenTask, TaskCompleted, TaskOpened


class Task(BaseModel):
    model_config = ConfigDict(frozen=True)

    opened: bool = False
    done: bool = False


def decide(state: Task, command: Command) -> Sequence[Event]:
    if isinstance(command, OpenTask):
        if state.opened:
            raise Rejected("task_exists", "this task is already open")
        return [TaskOpened(title=command.title)]
    if not state.opened:
        raise Rejected("no_such_task", "open the task first")
    if isinstance(command, CompleteTask):
        if state.done:
            raise Rejected("task_done", "this task is already complete")
        return [TaskCompleted()]
    raise TypeError(f"task does not handle {{type(command).__name__}}")


def evolve(state: Task, event: Event) -> Task:
    if isinstance(event, TaskOpened):
        return replace(state, opened=True)
    if isinstance(event, TaskCompleted):
        return replace(state, done=True)
    raise TypeError(f"task does not apply {{type(event).__name__}}")


TASKS = Aggregate(contract=TASK, initial=Task(), decide=decide, evolve=evolve)
''',
    "views.py": '''"""The `tasks` read model: one row per task, filterable by whether it is done."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

from eventfold import Change, Doc, EnvelopeMeta, Event, Projection
from {name}.contracts import TASK, TaskOpened

metadata = MetaData()
tasks = Table(
    "{name}_tasks",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("title", String(200), nullable=False),
    Column("done", Boolean, nullable=False),
)


def opened(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert isinstance(event, TaskOpened)
    return Change({{"title": event.title, "done": False}})


def completed(doc: Doc | None, env: EnvelopeMeta, event: Event) -> Change:
    assert doc is not None
    return Change({{**doc, "done": True}})


TASK_VIEW = Projection(
    name="tasks",
    contract=TASK,
    doc_table=tasks,
    handlers={{"TaskOpened": opened, "TaskCompleted": completed}},
    filters=["done"],
)
''',
    "app.py": '''"""What eventfold serves: the task aggregate and the tasks read model."""

from __future__ import annotations

from eventfold import App
from {name}.domain import TASKS
from {name}.views import TASK_VIEW

app = App(name="{name}", aggregates=[TASKS], projections=[TASK_VIEW])
''',
    "tests/__init__.py": "",
    "tests/test_domain.py": '''"""The task's rules: given events, when a command, then events or a refusal."""

from eventfold.testing import given
from {name}.contracts import CompleteTask, OpenTask, TaskCompleted, TaskOpened
from {name}.domain import TASKS


def test_a_task_opens_once() -> None:
    given(TASKS).when(OpenTask(title="write the docs")).then(TaskOpened(title="write the docs"))
    given(TASKS, TaskOpened(title="a")).when(OpenTask(title="b")).rejects("task_exists")


def test_a_task_completes_once() -> None:
    given(TASKS, TaskOpened(title="a")).when(CompleteTask()).then(TaskCompleted())
    given(TASKS, TaskOpened(title="a"), TaskCompleted()).when(CompleteTask()).rejects("task_done")
    given(TASKS).when(CompleteTask()).rejects("no_such_task")
''',
    "tests/test_views.py": '''"""The tasks read model, in memory: events in, rows out."""

from eventfold.testing import project
from {name}.contracts import TaskCompleted, TaskOpened
from {name}.views import TASK_VIEW


def test_a_completed_task_reads_as_done() -> None:
    view = project(TASK_VIEW, TaskOpened(title="a"), TaskCompleted(), stream_id="t-1")
    assert view.doc == {{"id": "t-1", "version": 2, "title": "a", "done": True}}
''',
}


class ScaffoldError(ValueError):
    """The package cannot be written; the message says why."""


def check_name(name: str) -> None:
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{name!r} is not a package name: lowercase letters, digits and '_', starting with a letter"
        )


def write_package(name: str, parent: Path) -> list[Path]:
    """Write package `name` under `parent`; refuses to touch a folder that exists."""
    check_name(name)
    root = parent / name
    if root.exists():
        raise ScaffoldError(f"{root} exists already; choose another name or folder")
    written = []
    for relative, template in _FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name))
        written.append(path)
    return written
