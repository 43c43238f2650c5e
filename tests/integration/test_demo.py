"""``s3ferry demo`` through its real entry point: own partitions, two worker processes,
every object verified byte-equal, exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from s3ferry.demo import Difference, Outcome, Totals, problems, render


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_demo_copies_every_object_byte_equal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s3ferry", "demo", "--objects", "5",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=280, check=False)

    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert re.search(r"^every object byte-equal\s+yes\b", out, re.M), out
    assert re.search(r"^metadata and tags equal\s+yes\b", out, re.M), out
    copied = re.search(r"^copied\s+(\d+)\b", out, re.M)
    assert copied is not None and int(copied.group(1)) > 0, out
    assert re.search(r"^failed\s+0$", out, re.M), out
    assert re.search(r"^dead letters\s+0$", out, re.M), out


def test_summary_says_no_and_lists_the_objects_that_differ() -> None:
    """No servers: the verdict lines and the failure list from a made-up outcome."""
    totals = Totals(bytes_copied=3)
    totals.add({"results": {"copied": 3, "failed": 1}, "dead_letters": {"s3:403": 1}})
    outcome = Outcome(
        objects=4, bytes_seeded=4, totals=totals, workers=[], worker_codes=[],
        mismatches=[Difference("a", frozenset({"tags"}), "'a': tags differ"),
                    Difference("b", frozenset({"missing"}), "'b': missing")],
        dlq_messages=1, queue_left=0, timings={"copy": 1.0}, drained_after=0.5, wall=2.0)

    text = render(outcome)

    assert re.search(r"^every object byte-equal\s+NO\s+\(3/4 objects", text, re.M), text
    assert re.search(r"^metadata and tags equal\s+NO\s+\(2/4 objects", text, re.M), text
    assert problems(outcome) == ["'a': tags differ", "'b': missing", "1 job(s) failed",
                                 "1 job(s) in the dead-letter queue"]
