"""Loaded by the bench's emulators (LocalStack) at start, through PYTHONPATH: after every
full (generation 2) garbage collection, freeze what survived.

Why: a LocalStack that holds the bench's seeded sets (over a million Python objects) pauses
1.3-1.5 s on each full collection, once or twice per W4b run, and the pause lands in
whichever tool is running. After :func:`gc.freeze` a full collection scans only the objects
made since the last one: measured pauses went from 1.26-1.52 s to 0.002-0.034 s. Garbage
that is not a reference cycle is still freed at once (reference counting); a frozen cycle
is kept until the emulator exits, which a bench run bounds. It changes no answer the
emulator gives, and runs for every tool alike.

``S3FERRY_BENCH_GC_LOG``, when set, names a file that gets one line per full collection
(pid, time, pause). Not the frozen count: :func:`gc.get_freeze_count` walks the whole frozen
list, ~50 ms for the bench's ~2 million objects, which stalled the emulator after each full
collection (py-spy on ``global`` during W4b, 2026-11-22: ~0.5 s per run).
"""

from __future__ import annotations

import gc
import os
import time

_LOG = os.environ.get("S3FERRY_BENCH_GC_LOG")
_started: list[float] = [0.0]


def _after_full_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    if info.get("generation") != 2:
        return
    if _LOG:
        pause = time.perf_counter() - _started[0]
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {time.time():.3f} pause={pause:.3f}\n")
    gc.freeze()


gc.callbacks.append(_after_full_collection)
