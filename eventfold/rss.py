"""Resident memory of service processes over a run, and whether one grew at steady load.

The benchmark and the chaos suite both watch their child processes here.
Each start of a process is an incarnation with a series of its own: a service
that is SIGKILLed and started again begins a new series, so a restart never
reads as a drop or a growth. Only a window the harness declares steady (the
same load from start to end) is judged: after a warm-up (the first
`WARMUP_FRACTION` of the window), the median of the last samples may exceed
the median of the first ones by at most `GROWTH_LIMIT`. Medians, so a single
spike (a burst of buffering during a fault) neither fails nor hides a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

GROWTH_LIMIT = 0.10
WARMUP_FRACTION = 0.2
# Each level is the median of at least this many samples (and a fifth of those after warm-up).
MIN_LEVEL_SAMPLES = 3
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024) if hasattr(os, "sysconf") else 4096 / (1024 * 1024)


def rss_mb(pid: int) -> float | None:
    """Current resident set of a live process in MB (`/proc/<pid>/statm`); None once gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    # A zombie (killed, not yet reaped) has no pages left: it is gone.
    return resident * _PAGE_MB if resident > 0 else None


@dataclass
class Series:
    """One incarnation of one service: its RSS samples, times in seconds from the sampler's start."""

    name: str
    incarnation: int
    pid: int
    started: float
    ended: float | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # declared steady

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t, mb) for t, mb in self.samples if start <= t <= end]

    def summary(self) -> dict[str, Any]:
        mbs = [mb for _, mb in self.samples]
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "pid": self.pid,
            "started_s": round(self.started, 1),
            "ended_s": round(self.ended, 1) if self.ended is not None else None,
            "first_mb": round(mbs[0], 1) if mbs else None,
            "peak_mb": round(max(mbs), 1) if mbs else None,
            "last_mb": round(mbs[-1], 1) if mbs else None,
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in self.samples],
        }


@dataclass(frozen=True)
class Judgement:
    """Whether one incarnation grew over one steady window; `judged` is False when too short."""

    name: str
    incarnation: int
    label: str
    window_s: float
    samples: int
    warmup_mb: float | None
    end_mb: float | None
    growth: float | None  # end over warm-up level, minus 1
    judged: bool
    reason: str = ""

    @property
    def grew(self) -> bool:
        return self.judged and self.growth is not None and self.growth > GROWTH_LIMIT

    @property
    def verdict(self) -> str:
        if not self.judged:
            return f"not judged: {self.reason}"
        return "GREW" if self.grew else "ok"

    def sentence(self) -> str:
        who = f"{self.name} (incarnation {self.incarnation}, {self.label}, {self.window_s:.0f} s)"
        if not self.judged:
            return f"{who}: {self.verdict}"
        return (
            f"{who}: {self.warmup_mb:.1f} MB after warm-up -> {self.end_mb:.1f} MB at the end "
            f"({100 * (self.growth or 0):+.1f}%, limit +{100 * GROWTH_LIMIT:.0f}%): {self.verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "label": self.label,
            "window_s": round(self.window_s, 1),
            "samples": self.samples,
            "warmup_mb": _r(self.warmup_mb),
            "end_mb": _r(self.end_mb),
            "growth_pct": _r(100 * self.growth) if self.growth is not None else None,
            "limit_pct": 100 * GROWTH_LIMIT,
            "verdict": self.verdict,
        }


def judge(
    series: Series,
    label: str,
    start: float,
    end: float,
    *,
    startup_s: float = 0.0,
    min_steady_s: float = 0.0,
    warmup_fraction: float = WARMUP_FRACTION,
) -> Judgement:
    """The level after warm-up against the level at the end of [start, end] (see the module doc).

    Warm-up lasts the window's first `warmup_fraction`, and at least until the
    process is `startup_s` old (a process started under load is still importing
    and filling its pools); at least `min_steady_s` must remain after it.
    """
    window = max(0.0, end - start)
    warm = max(start + warmup_fraction * window, series.started + startup_s)
    inside = series.between(start, end)
    post = [mb for t, mb in inside if t >= warm]
    k = max(MIN_LEVEL_SAMPLES, len(post) // 5)

    def verdict(judged: bool, reason: str = "", w: float | None = None, e: float | None = None) -> Judgement:
        growth = e / w - 1 if w and e is not None else None
        return Judgement(
            series.name, series.incarnation, label, window, len(inside), w, e, growth, judged, reason
        )

    if end - warm < min_steady_s:
        return verdict(False, f"{max(0.0, end - warm):.0f} s after warm-up, {min_steady_s:.0f} s needed")
    if len(post) < 2 * k:
        return verdict(False, f"{len(post)} samples after warm-up, {2 * k} needed")
    return verdict(True, "", statistics.median(post[:k]), statistics.median(post[-k:]))


class RssSampler:
    """Samples every watched process every `interval_s` until stopped."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.series: list[Series] = []
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return time.monotonic() - self._t0

    def watch(self, name: str, pid: int) -> Series:
        """A new incarnation of `name`; any earlier one of the same name has ended."""
        for s in self.series:
            if s.name == name and s.ended is None:
                s.ended = self.now()
        incarnation = 1 + sum(1 for s in self.series if s.name == name)
        s = Series(name, incarnation, pid, self.now())
        self.series.append(s)
        self._sample(s)
        return s

    def current(self, pid: int) -> Series | None:
        for s in reversed(self.series):
            if s.pid == pid and s.ended is None:
                return s
        return None

    @contextlib.contextmanager
    def steady(self, pid: int, label: str) -> Iterator[None]:
        """Declare the process's load steady for the duration of the block."""
        s, start = self.current(pid), self.now()
        try:
            yield
        finally:
            if s is not None:
                self._sample(s)
                s.windows.append((label, start, self.now()))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample_all()

    async def _run(self) -> None:
        while True:
            self.sample_all()
            await asyncio.sleep(self.interval_s)

    def sample_all(self) -> None:
        # Reading /proc is an in-memory read of a few bytes per process.
        for s in self.series:
            if s.ended is None:
                self._sample(s)

    def _sample(self, s: Series) -> None:
        mb = rss_mb(s.pid)
        if mb is None:
            s.ended = self.now()
        else:
            s.samples.append((self.now(), mb))

    def judge_windows(self) -> list[Judgement]:
        """Every declared steady window of every incarnation."""
        return [judge(s, label, start, end) for s in self.series for label, start, end in s.windows]

    def judge_lifetimes(
        self, start: float, end: float, label: str, *, startup_s: float, min_steady_s: float
    ) -> list[Judgement]:
        """Each incarnation over the part of [start, end] it lived (chaos: the whole load is steady)."""
        out = []
        for s in self.series:
            lo, hi = max(start, s.started), min(end, s.ended if s.ended is not None else end)
            if hi > lo:
                out.append(judge(s, label, lo, hi, startup_s=startup_s, min_steady_s=min_steady_s))
        return out

    def report(self, judgements: Sequence[Judgement]) -> dict[str, Any]:
        """The JSON section: every series with its samples, and every judgement."""
        return {
            "interval_s": self.interval_s,
            "growth_limit_pct": 100 * GROWTH_LIMIT,
            "warmup_fraction": WARMUP_FRACTION,
            "processes": [s.summary() for s in self.series],
            "steady": [j.as_dict() for j in judgements],
            "grew": [j.sentence() for j in judgements if j.grew],
        }


def _r(v: float | None) -> float | None:
    return round(v, 1) if v is not None else None
