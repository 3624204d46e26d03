"""Hot spots from py-spy's collapsed stacks (`--format raw`)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

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


def hot_spots(raw: Path, top: int = 20) -> dict[str, object]:
    """Share of samples per function: `self` (on top of the stack) and `total` (anywhere)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        n = int(m["count"])
        frames = [_name(f) for f in m["stack"].split(";") if f]
        if not frames:
            continue
        # py-spy puts the thread name first; real frames follow.
        if frames[0].startswith(("process ", "thread ")):
            frames = frames[1:] or frames
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        modules[_package(frames[-1])] += n

    def share(c: Counter[str]) -> list[list[object]]:
        return [[name, round(100.0 * v / samples, 1)] for name, v in c.most_common(top)] if samples else []

    return {
        "samples": samples,
        "self_pct": share(own),
        "total_pct": share(total),
        "self_pct_by_package": share(modules),
    }


def _package(name: str) -> str:
    path = name.split(":", 1)[0]
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")
