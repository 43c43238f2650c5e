"""The bench's emulators load ``bench/emulator/sitecustomize.py``: after a full garbage
collection the surviving heap is frozen, so the next full collection does not walk it again
(LocalStack paused 1.3-1.5 s per full collection on the bench's seeded heap without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.run import EMULATOR_SITE, GC_LOG, emulator_env, emulator_gc

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
