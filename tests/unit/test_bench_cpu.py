"""The benchmark's CPU accounting: per program between two samples, and when the broker is warm."""

from __future__ import annotations

import os

from bench.env import cpu_by_program, cpu_delta_us, machine_quiet
from bench.warm import _steady


def test_cpu_per_event_is_summed_by_program_across_processes() -> None:
    before = {10: ("postgres", 1.0), 11: ("postgres", 2.0), 20: ("kworker", 5.0)}
    after = {10: ("postgres", 1.3), 11: ("postgres", 2.2), 20: ("kworker", 5.1), 30: ("python", 0.2)}
    per = cpu_delta_us(before, after, 1000)
    assert per == {"postgres": 500.0, "python": 200.0, "kworker": 100.0}
    assert list(per) == ["postgres", "python", "kworker"]  # the busiest first


def test_programs_below_half_a_microsecond_per_event_are_left_out() -> None:
    per = cpu_delta_us({1: ("java", 1.0)}, {1: ("java", 1.0), 2: ("sshd", 0.0001)}, 1000)
    assert per == {}


def test_this_process_is_sampled_with_the_cpu_it_used() -> None:
    sum(i * i for i in range(200_000))  # some CPU of our own
    name, seconds = cpu_by_program()[os.getpid()]
    assert name.startswith("python") or name == "pytest"
    assert seconds > 0


def test_the_broker_is_warm_once_three_windows_cost_the_same() -> None:
    assert _steady([400.0, 420.0, 390.0])
    assert not _steady([897.0, 530.0, 421.0])  # still compiling
    assert not _steady([420.0, 419.0])  # too few windows


async def test_a_quiet_machine_ends_the_wait_after_one_window() -> None:
    windows = await machine_quiet(max_s=5.0, window_s=0.05, quiet_cores=1000.0)
    assert len(windows) == 1 and windows[0] >= 0


async def test_a_machine_that_never_quiets_is_waited_for_until_the_deadline() -> None:
    windows = await machine_quiet(max_s=0.3, window_s=0.05, quiet_cores=-1.0)
    assert 2 <= len(windows) <= 7  # every window until the deadline, none after it
    assert all(w >= 0 for w in windows)
