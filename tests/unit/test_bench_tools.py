"""The bench's end of an s3ferry run (jobs the workers logged as finished decide only how
often the queue is asked; an empty queue decides the end), and how often each workload runs."""

from __future__ import annotations

from pathlib import Path

from bench.run import build_plan, parse_args
from bench.tools import FinishedJobs, _enqueued_jobs


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


def test_the_expected_job_count_comes_from_the_backfill_summary() -> None:
    assert _enqueued_jobs({"enqueued": {"jobs": {"copy": 16}, "bytes": 1}}) == 16
    assert _enqueued_jobs({"enqueued": {"jobs": {"copy": 5, "delete": 2}}}) == 7
    assert _enqueued_jobs({}) is None  # no summary: the queue is polled slowly, still ends


def test_short_workloads_get_more_repetitions_unless_a_count_is_asked() -> None:
    """W4a and W4b (runs of seconds) repeat more than the plan's default; --reps N means N
    for every workload."""
    plan = build_plan(parse_args([]))
    reps = {w.id: plan.reps_of(w) for w in plan.workloads}
    assert reps["W4a"] > reps["W1"] == plan.reps == 3 and reps["W4b"] > plan.reps
    assert plan.rounds == max(reps.values())
    asked = build_plan(parse_args(["--reps", "2"]))
    assert {asked.reps_of(w) for w in asked.workloads} == {2} and asked.rounds == 2
