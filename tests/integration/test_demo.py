"""``s3ferry demo`` through its real entry point: own partitions, a backfill through the
dispatcher to two worker processes, then event mode (``s3ferry events``, new objects, an
overwrite, a delete), every object verified byte-equal, exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from s3ferry.demo import (
    DemoRun,
    Difference,
    EventPhase,
    Totals,
    WorkerProcess,
    problems,
    render,
)


def _value(label: str, out: str) -> str:
    found = re.search(rf"^{re.escape(label)}\s+(.*)$", out, re.M)
    assert found is not None, f"no {label!r} line in\n{out}"
    return found.group(1)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_demo_backfills_then_mirrors_events_byte_equal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s3ferry", "demo", "--objects", "5",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=280, check=False)

    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    # backfill: the dispatcher enqueued one copy per seeded object, the workers copied them
    seeded = int(_value("objects seeded", out).split()[0])
    assert _value("backfill enqueued", out).startswith(f"copy {seeded} "), out
    assert _value("backfill decisions", out) == f"copy:missing {seeded}", out
    assert int(_value("copied", out).split()[0]) == seeded, out
    assert _value("failed", out) == "0", out
    assert _value("dead letters", out) == "0", out
    # event mode: 3 uploads + 1 overwrite + 1 delete became 4 copies and 1 delete
    assert _value("source changes", out) == "deleted 1, overwritten 1, uploaded 3", out
    assert re.match(r"created 4, removed 1\b", _value("events received", out)), out
    assert _value("event jobs enqueued", out) == "copy 4, delete 1", out
    assert _value("event workers did", out).startswith("copied 4, deleted 1 "), out
    assert _value("event dead letters", out) == "0", out
    assert re.match(r"[\d.]+ s after the changes", _value("destination mirrored", out)), out
    # where /metrics was served, and that everything exited cleanly after SIGTERM
    metrics = re.findall(r"^(.*/metrics)\s+http://127\.0\.0\.1:\d+/metrics "
                         r"\((?:scraped \d+x|never scraped).*; exit 0;", out, re.M)
    assert sorted(metrics) == ["event worker 1 /metrics", "event worker 2 /metrics",
                               "events listener /metrics", "worker 1 /metrics",
                               "worker 2 /metrics"], out
    # the final verdicts
    assert _value("objects at the end", out) == str(seeded + 3 - 1), out
    assert re.match(r"yes\b", _value("every object byte-equal", out)), out
    assert re.match(r"yes\b", _value("metadata and tags equal", out)), out
    assert re.match(r"yes\b", _value("deleted object gone", out)), out
    assert _value("extra at destination", out) == "0", out
    assert _value("backfill re-run", out).startswith("nothing to do"), out
    assert re.match(r"yes\b", _value("verdict", out)), out


def _outcome(**extra: Any) -> DemoRun:
    totals = Totals(bytes_copied=3)
    totals.add({"results": {"copied": 3, "failed": 1}, "dead_letters": {"s3:403": 1}})
    return DemoRun(
        objects=4, bytes_seeded=4, totals=totals, workers=[], worker_codes=[],
        mismatches=[Difference("a", frozenset({"tags"}), "'a': tags differ"),
                    Difference("b", frozenset({"missing"}), "'b': missing")],
        dlq_messages=1, queue_left=0, timings={"copy": 1.0}, drained_after=0.5, wall=2.0,
        **extra)


def test_summary_says_no_and_lists_the_objects_that_differ() -> None:
    """No servers: the verdict lines and the failure list from a made-up outcome."""
    outcome = _outcome()

    text = render(outcome)

    assert re.search(r"^every object byte-equal\s+NO\s+\(3/4 objects", text, re.M), text
    assert re.search(r"^metadata and tags equal\s+NO\s+\(2/4 objects", text, re.M), text
    assert re.search(r"^verdict\s+NO\s+\(4 problem", text, re.M), text
    assert problems(outcome) == ["'a': tags differ", "'b': missing", "1 job(s) failed",
                                 "1 job(s) in the dead-letter queue"]


def test_summary_says_no_when_event_mode_left_the_deleted_object(tmp_path: Path) -> None:
    listener = WorkerProcess(index=0, popen=cast(Any, None), metrics_port=9400,
                             log_path=tmp_path / "events.log",
                             summary_path=tmp_path / "events-summary.json")
    events = EventPhase(
        changes={"uploaded": 3, "overwritten": 1, "deleted": 1}, deleted_key="gone.txt",
        listener=listener, listener_code=0,
        listener_summary={"events": {"created": 4}, "jobs": {"copy": 4}},
        totals=Totals(), workers=[], worker_codes=[], mirrored_after=None, events_dlq=0)
    outcome = _outcome(events=events, extras=["gone.txt"], rerun={"delete": 1})

    text = render(outcome)

    assert re.search(r"^deleted object gone\s+NO\b", text, re.M), text
    assert re.search(r"^destination mirrored\s+NOT within 90 s", text, re.M), text
    assert re.search(r"^events listener /metrics\s+http://127\.0\.0\.1:9400/metrics "
                     r"\(never scraped; exit 0;", text, re.M), text
    assert re.search(r"^backfill re-run\s+would enqueue delete 1$", text, re.M), text
    assert re.search(r"^verdict\s+NO\b", text, re.M), text
    assert problems(outcome)[-3:] == [
        "'gone.txt': at the destination, not at the source",
        "a backfill re-run would enqueue delete 1",
        "the destination did not mirror the source within 90 s"]
