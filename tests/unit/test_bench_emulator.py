"""The bench's emulators load ``bench/emulator/sitecustomize.py``: after a full garbage
collection the surviving heap is frozen, so the next full collection does not walk it again
(LocalStack paused 1.3-1.5 s per full collection on the bench's seeded heap without it).
And each run starts once the emulators are at rest, so work left by one run does not land in
the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.measure import cpu_times_by_group, settle
from bench.run import EMULATOR_SITE, GC_LOG, emulator_env, emulator_gc, settled

PROBE = """
import gc
before = gc.get_freeze_count()
kept = [[i] for i in range(50_000)]  # long-lived objects, as an emulator's bucket store
gc.collect()
print(before, gc.get_freeze_count())
"""


def test_a_process_started_with_the_bench_emulator_env_freezes_after_full_collections(
        tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **emulator_env(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after >= 50_000  # the kept lists are frozen, not walked again
    summary = emulator_gc(tmp_path)
    assert summary["full_collections"] >= 1
    assert 0 <= summary["max_pause_seconds"] < 60
    assert (tmp_path / GC_LOG).read_text().split()[0].isdigit()  # pid first


def test_without_the_env_nothing_is_frozen(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["0", "0"]
    assert emulator_gc(tmp_path) == {"full_collections": 0, "max_pause_seconds": 0.0,
                                     "pauses_over_100ms": 0}
    assert (EMULATOR_SITE / "sitecustomize.py").is_file()


# -- runs start with the emulators at rest ---------------------------------------------------

class Clock:
    """An emulator's CPU counter that grows by a given amount each window; no real waiting."""

    def __init__(self, growth: list[float]) -> None:
        self.growth = growth
        self.cpu = 5.0
        self.slept = 0.0

    def read(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.cpu += self.growth.pop(0) if self.growth else 0.0


def test_a_quiet_emulator_lets_the_run_start_after_one_window() -> None:
    clock = Clock([0.0])
    assert settle(clock.read, sleep=clock.sleep, window=0.25, cores=0.15) == (0.25, True)


def test_a_busy_emulator_is_waited_for_until_a_window_is_quiet() -> None:
    clock = Clock([0.25, 0.2, 0.04, 0.0])  # a core, 0.8 core, 0.16 core, idle
    assert settle(clock.read, sleep=clock.sleep, window=0.25, cores=0.15) == (1.0, True)


def test_an_emulator_that_never_rests_is_given_up_on_at_the_limit() -> None:
    clock = Clock([0.1] * 100)
    waited, quiet = settle(clock.read, sleep=clock.sleep, window=0.25, cores=0.15, limit=2.0)
    assert (waited, quiet) == (2.0, False)
    assert clock.slept == 2.0


def test_a_process_groups_cpu_counts_this_process() -> None:
    own = sum(os.times()[:2])  # this process's user + system seconds so far
    mine, none = os.getpgrp(), 2 ** 22 + 12345
    times = cpu_times_by_group([mine, none])
    assert sum(times[mine]) >= own - 0.05  # /proc counts in clock ticks
    assert sum(times[none]) == 0.0  # no such group


def test_a_process_groups_kernel_time_is_counted_apart() -> None:
    """Work in the kernel for this process (pages faulted in) shows as system time."""
    before_user, before_system = cpu_times_by_group([os.getpgrp()])[os.getpgrp()]
    pages = bytearray(256 * 1024 * 1024)  # zero pages, faulted in when written below
    for i in range(0, len(pages), 4096):
        pages[i] = 1
    user, system = cpu_times_by_group([os.getpgrp()])[os.getpgrp()]
    assert system > before_system and user >= before_user
    del pages


def test_the_report_says_how_long_runs_waited_for_rest() -> None:
    runs = [{"settled": {"seconds": 0.25, "quiet": True}},
            {"settled": {"seconds": 10.0, "quiet": False}},
            {"settled": {"seconds": 0.5, "quiet": True}}, {}]  # W5-synthetic: no emulator
    assert settled(runs) | {"quiet_cores": 0, "window_seconds": 0} == {
        "runs": 3, "median_seconds": 0.5, "max_seconds": 10.0, "not_quiet": 1,
        "quiet_cores": 0, "window_seconds": 0}
