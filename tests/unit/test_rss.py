"""The memory-growth judgement shared by the benchmark and the chaos suite."""

from __future__ import annotations

import subprocess
import sys

from chaos.oracle import check
from eventfold.rss import GROWTH_LIMIT, RssSampler, Series, judge


def _series(levels: list[float], name: str = "svc", incarnation: int = 1) -> Series:
    """One sample per second at the given levels."""
    return Series(name, incarnation, 1, 0.0, samples=[(float(t), mb) for t, mb in enumerate(levels)])


def test_flat_after_a_warm_up_ramp_is_ok() -> None:
    levels = [20.0, 60.0, 90.0, 99.0] + [100.0 + (t % 3) for t in range(36)]
    j = judge(_series(levels), "steady", 0, 39)
    assert j.judged and not j.grew, j
    assert j.verdict == "ok"


def test_steady_growth_after_warm_up_fails() -> None:
    # 105 MB to 213 MB over the window, as the command API did with its leaked sets.
    levels = [105.0 + 108.0 * t / 59 for t in range(60)]
    j = judge(_series(levels), "steady", 0, 59)
    assert j.grew and j.verdict == "GREW"
    assert j.growth is not None and j.growth > GROWTH_LIMIT
    assert "GREW" in j.sentence() and "svc (incarnation 1" in j.sentence()


def test_spikes_neither_fail_nor_hide_growth() -> None:
    spiky = [100.0] * 40
    spiky[-1] = spiky[-10] = 180.0  # a burst of buffering during a fault
    assert not judge(_series(spiky), "steady", 0, 39).grew
    growing = [100.0] * 20 + [130.0] * 20
    growing[-1] = 60.0
    assert judge(_series(growing), "steady", 0, 39).grew


def test_a_window_too_short_is_not_judged() -> None:
    j = judge(_series([100.0, 200.0, 300.0]), "steady", 0, 2)
    assert not j.judged and not j.grew
    assert j.verdict.startswith("not judged")
    assert not judge(_series([100.0] * 40), "steady", 0, 39, min_steady_s=60).judged


def test_a_process_started_under_load_warms_up_first() -> None:
    """Half a minute of imports and pools at the start of a restarted process is no leak."""
    ramp = [min(100.0, 4.0 * t) for t in range(60)]
    assert judge(_series(ramp), "under load", 0, 59).grew
    assert not judge(_series(ramp), "under load", 0, 59, startup_s=30).grew
    assert not judge(_series(ramp), "under load", 0, 59, startup_s=30, min_steady_s=40).judged


def test_each_incarnation_is_judged_on_its_own() -> None:
    """A SIGKILLed service restarts low and warms up again: neither life grew."""
    sampler = RssSampler()
    first = _series([100.0] * 40, "command-api-0", 1)
    first.ended = 39.0
    second = _series([], "command-api-0", 2)
    second.started = 40.0
    second.samples = [(40.0 + t, 30.0 if t < 3 else 100.0) for t in range(40)]
    sampler.series = [first, second]
    judged = sampler.judge_lifetimes(0, 79, "under load", startup_s=0, min_steady_s=15)
    assert [(j.incarnation, j.judged, j.grew) for j in judged] == [(1, True, False), (2, True, False)]


def test_the_sampler_follows_a_real_process_and_its_restart() -> None:
    # Holds 40 more MB (written, so resident) for each line it reads.
    grow = (
        "import sys\nheld = []\nfor _ in sys.stdin:\n"
        "    held.append(b'x' * (40 << 20))\n    print(flush=True)\n"
    )
    sampler = RssSampler()
    procs = []
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-c", grow], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            procs.append(proc)
            series = sampler.watch("grower", proc.pid)
            assert proc.stdin is not None and proc.stdout is not None
            with sampler.steady(proc.pid, "allocating"):
                for _ in range(8):
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                    proc.stdout.readline()  # the allocation is done
                    sampler.sample_all()
        assert [s.incarnation for s in sampler.series] == [1, 2]
        assert sampler.series[0].ended is not None and series.ended is None
        verdicts = sampler.judge_windows()
        assert [(j.incarnation, j.grew) for j in verdicts] == [(1, True), (2, True)], verdicts
        report = sampler.report(verdicts)
        assert len(report["grew"]) == 2 and report["processes"][1]["peak_mb"] > 300
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    sampler.sample_all()
    assert all(s.ended is not None for s in sampler.series)


def test_growth_is_a_violation_of_the_chaos_oracle() -> None:
    grew = judge(_series([100.0 + t for t in range(60)], "projector-1"), "under load", 0, 59)
    flat = judge(_series([100.0] * 60, "publisher"), "under load", 0, 59)
    verdict = check([], [], ({}, []), {}, [], [grew, flat])
    assert verdict.counts["memory_flat_under_load"] == 1
    assert verdict.total == 1
    assert "projector-1" in verdict.violations["memory_flat_under_load"][0]


def test_growth_fails_the_benchmark_summary() -> None:
    from io import StringIO

    from rich.console import Console

    from bench.report import Report

    sampler = RssSampler(interval_s=0.5)
    sampler.series = [_series([105.0 + 2 * t for t in range(60)], "command-api")]
    sampler.series[0].windows = [("command_api.steady", 0.0, 59.0)]
    report = Report("quick")
    report.data["rss"] = sampler.report(sampler.judge_windows())
    assert report.memory_failures() and "command-api" in report.memory_failures()[0]
    out = StringIO()
    report.print(Console(file=out, width=200))
    assert "command_api.steady" in out.getvalue() and "GREW" in out.getvalue()
    report.data["rss"] = RssSampler().report([])
    assert report.memory_failures() == []
