"""``python -m bench.jobcost`` keeps working: every job copied, every message deleted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import jobcost

pytestmark = pytest.mark.timeout(120)


def test_the_worker_copies_every_job_against_the_canned_store() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.jobcost", "--jobs", "250"],
                          capture_output=True, text=True, check=True, timeout=100)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["results"] == {"copied": 250}
    assert result["deleted_messages"] == 3  # bundles of 100, 100 and 50
    assert result["cpu_ms_per_job"] > 0


def test_bundles_carry_every_job_once() -> None:
    from common.jobs import Bundle, decode, decode_item

    keys = []
    for body in jobcost.bundles(205):
        bundle = decode(body)
        assert isinstance(bundle, Bundle)
        keys += [decode_item(item).source.key for item in bundle.jobs]  # type: ignore[union-attr]
    assert keys == [f"small/{i:06d}" for i in range(205)]
