"""Hot spots from py-spy's collapsed stacks (`--format raw`)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `pkg/mod.py:func`."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m['func']}"


# Leaves where a thread waits rather than works. py-spy's own idle detection
# misses threads parked on a condition variable (anyio's worker threads).
IDLE_LEAVES = frozenset(
    {
        "threading.py:Condition.wait",
        "threading.py:Thread._wait_for_tstate_lock",
        "selectors.py:EpollSelector.select",
        "queue.py:Queue.get",
    }
)
OURS = ("command_api/", "eventfold/", "schemas/", "projector/", "query_api/")


def hot_spots(raw: Path, top: int = 25) -> dict[str, object]:
    """Share of busy samples per function: `self` (top of the stack) and `total` (anywhere)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    samples = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        n = int(m["count"])
        frames = [_name(f) for f in m["stack"].split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += n
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        modules[_package(frames[-1])] += n

    def share(items: list[tuple[str, int]]) -> list[list[object]]:
        return [[name, round(100.0 * v / samples, 1)] for name, v in items] if samples else []

    # Frames on nearly every stack (the loop, the CLI) say nothing.
    informative = [(k, v) for k, v in total.most_common() if v < 0.9 * samples]
    ours = [(k, v) for k, v in informative if k.startswith(OURS)]
    return {
        "busy_samples": samples,
        "idle_samples": idle,
        "self_pct": share(own.most_common(top)),
        "total_pct": share(informative[:top]),
        "total_pct_eventfold": share(ours[:top]),
        "self_pct_by_package": share(modules.most_common(15)),
    }


def _package(name: str) -> str:
    path = name.split(":", 1)[0]
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


class Recording:
    """py-spy attached to one process: a flame graph (svg) and collapsed stacks (txt).

    Two samplers run side by side because py-spy writes one format per run;
    both cost the target some speed, so profiled runs are never measured runs.
    """

    def __init__(self, pid: int, name: str, duration_s: int, rate: int = 100) -> None:
        self.name = name
        self.svg = RESULTS / f"profile-{name}.svg"
        self.raw = RESULTS / f"profile-{name}.txt"
        self.procs: list[subprocess.Popen[bytes]] = []
        exe = py_spy()
        if exe is None:
            self.error: str | None = "py-spy is not installed (pip install py-spy)"
            return
        self.error = None
        RESULTS.mkdir(parents=True, exist_ok=True)
        common = ["record", "--pid", str(pid), "--duration", str(duration_s), "--rate", str(rate)]
        common.append("--subprocesses")  # a parallel replay works in child processes
        for extra in (["-o", str(self.svg)], ["--format", "raw", "-o", str(self.raw)]):
            self.procs.append(
                subprocess.Popen([exe, *common, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )

    async def finish(self, timeout_s: float = 120) -> dict[str, object]:
        if self.error:
            return {"error": self.error}
        codes = []
        for p in self.procs:
            try:
                codes.append(await asyncio.wait_for(asyncio.to_thread(p.wait), timeout_s))
            except TimeoutError:
                p.terminate()
                codes.append(await asyncio.to_thread(p.wait))
        out: dict[str, object] = {"flamegraph": f"bench/results/{self.svg.name}"}
        if not self.raw.exists():
            errs = [p.stderr.read().decode(errors="replace")[-300:] for p in self.procs if p.stderr]
            out["error"] = f"py-spy exited {codes}: {errs}"
            return out
        out.update(hot_spots(self.raw))
        return out
