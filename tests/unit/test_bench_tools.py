"""The bench's end of an s3ferry run (jobs the workers logged as finished decide only how
often the queue is asked; an empty queue decides the end), and how often each workload runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.run import Runner, build_plan, parse_args
from bench.seed import Seeded
from bench.tools import (
    LOOK_MAX_SECONDS,
    LOOK_MIN_SECONDS,
    FinishedJobs,
    RunResult,
    Side,
    Tools,
    _enqueued_jobs,
    next_look,
)
from bench.workloads import ObjectSet, Plan, Variant, Workload
from common.settings import WorkerSettings


def test_finished_jobs_are_counted_from_what_the_log_gained(tmp_path: Path) -> None:
    log = tmp_path / "worker0.log"
    counter = FinishedJobs(log)
    assert counter.count() == 0  # no log yet

    log.write_bytes(b'{"event": "worker_started"}\n{"event": "job_copied", "bytes": 1}\n'
                    b'{"event": "job_to_retry"}\n{"event": "job_ski')  # a line being written
    assert counter.count() == 1
    with log.open("ab") as fh:
        fh.write(b'pped", "reason": "already_copied:size"}\n{"event": "job_deleted"}\n')
    assert counter.count() == 3  # the split line counted once, when complete
    assert counter.count() == 3  # nothing new


def test_the_logs_are_read_often_only_near_the_end_and_always_for_the_last_wave() -> None:
    # 5,000 small copies at 400 a second, 64 at a time: early on, the slowest looks
    assert next_look(4000, 1000, 2.5, wave=64) == LOOK_MAX_SECONDS
    # 164 left: 100 ahead of the last wave, a quarter of their 0.25 s
    assert next_look(164, 4836, 12.09, wave=64) == pytest.approx(0.0625)
    # the last wave, or 16 large copies that may all end at once: every 10 ms
    assert next_look(64, 4936, 12.3, wave=64) == LOOK_MIN_SECONDS
    assert next_look(4, 12, 4.5, wave=64) == LOOK_MIN_SECONDS
    # no job finished yet: no rate to go by, so no long sleep either
    assert next_look(5000, 0, 0.05, wave=64) == LOOK_MIN_SECONDS
    # the backfill did not say how many: the slow polls of the queue decide the end
    assert next_look(None, 10, 1.0, wave=64) == LOOK_MAX_SECONDS
    # never the sleep that would let the jobs ahead of the last wave end at four times the rate
    left, finished, seconds = 1000, 500, 1.0
    assert next_look(left, finished, seconds, wave=64) <= (left - 64) / (4 * finished / seconds)


def test_the_last_wave_is_the_fleets_jobs_at_once_as_the_workers_read_them() -> None:
    tools = Tools.__new__(Tools)  # no servers needed to read the worker settings
    tools.worker_env = {"S3FERRY_WORKER__MAX_JOBS": "16"}
    assert tools.jobs_at_once(4) == 64
    tools.worker_env = {}  # unset: the worker's own default, not the bench's
    assert tools.jobs_at_once(2) == 2 * WorkerSettings().max_jobs


def test_the_expected_job_count_comes_from_the_backfill_summary() -> None:
    assert _enqueued_jobs({"enqueued": {"jobs": {"copy": 16}, "bytes": 1}}) == 16
    assert _enqueued_jobs({"enqueued": {"jobs": {"copy": 5, "delete": 2}}}) == 7
    assert _enqueued_jobs({}) is None  # no summary: the queue is polled slowly, still ends


def test_short_workloads_get_more_repetitions_unless_a_count_is_asked() -> None:
    """W4a and W4b (runs of seconds) and W3 (one object: one slow run decides a median of
    3) repeat more than the plan's default; --reps N means N for every workload."""
    plan = build_plan(parse_args([]))
    reps = {w.id: plan.reps_of(w) for w in plan.workloads}
    assert reps["W4a"] > reps["W1"] == plan.reps == 3 and reps["W4b"] > plan.reps
    assert reps["W3"] > plan.reps
    assert plan.rounds == max(reps.values())
    asked = build_plan(parse_args(["--reps", "2"]))
    assert {asked.reps_of(w) for w in asked.workloads} == {2} and asked.rounds == 2


def test_a_runs_destination_is_deleted_just_before_the_next_clock_after_its_setup(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Memory a tool's setup takes after a large delete slows the emulator's next writes on
    this VM, so the delete comes after the next run's setup, right before its clock."""
    events: list[str] = []

    class FakeTools:
        s3 = {"global": object()}

        def run_s5cmd(self, variant: Variant, src: Side, dst: Side, run_dir: Path, *,
                      before_clock: Callable[[], None]) -> RunResult:
            events.append(f"setup {dst.bucket[:11]}")
            before_clock()
            events.append(f"clock {dst.bucket[:11]}")
            return RunResult(wall_seconds=1.0, cpu_seconds=0.1, peak_rss=1)

    monkeypatch.setattr("bench.run.create_bucket", lambda client, bucket: None)
    monkeypatch.setattr("bench.run.drop_bucket",
                        lambda client, bucket: events.append(f"drop {bucket[:11]}"))
    monkeypatch.setattr("bench.run.verify", lambda *a: {"bytes": 1, "objects": 1})
    objects = ObjectSet(name="large", count=1, size=1)
    workload = Workload(id="W4a", title="t", objects=objects, destination="global",
                        variants=(), baseline=None, verify_sample=0)
    plan = Plan(name="t", reps=1, workloads=(workload,), diff=None)
    runner = Runner(FakeTools(), plan, tmp_path, lambda _: None)  # type: ignore[arg-type]
    runner.seeded["large"] = Seeded(endpoint="global", bucket="src", objects=objects,
                                    sizes={}, digests={})
    s5cmd = Variant(label="s5cmd", tool="s5cmd")

    first, second = runner.copy(workload, s5cmd, 0), runner.copy(workload, s5cmd, 1)
    runner.clean_up()

    assert first["ok"] and second["ok"]
    assert events == ["setup w4a-s5cmd-0", "clock w4a-s5cmd-0",
                      "setup w4a-s5cmd-1", "drop w4a-s5cmd-0", "clock w4a-s5cmd-1",
                      "drop w4a-s5cmd-1"]
