"""``make soak`` in small (tests/soak.py): 150 objects, faults on, two workers killed and
started again, a redelivery storm; nothing lost, corrupted or left open, and every dead
letter one that was meant to be."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3ferry.localbed import LocalBed
from tests import soak


@pytest.mark.timeout(600)
def test_a_small_soak_loses_nothing_corrupts_nothing_and_leaves_nothing_open(
        bed: LocalBed, tmp_path: Path) -> None:
    report = soak.run(bed, tmp_path, soak.SMALL)

    assert report.passed(), "\n".join(report.lines())
    assert report.kills == soak.SMALL.kills
    assert report.objects >= soak.SMALL.objects and sum(report.faults.values()) > 10
    assert sum(report.dead_letters.values()) >= 4  # the ones meant to fail did
