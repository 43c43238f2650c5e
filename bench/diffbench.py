"""W5 in process: N synthetic keys through ``dispatcher.diff.diff``; keys/s and peak RSS.

Run as its own process (``python -m bench.diffbench --keys N --out F``) so that its peak RSS
(``VmHWM``) is the diff's and not the bench's. The listings are
generated lazily, as pages arrive from S3, so memory measures the diff, not a key list:

* source: N keys ``dNN/key-XXXXXXXX`` in UTF-8 order;
* destination: 90 % of them (every 10th missing), every 7th with another size, plus one extra
  key in 1,000 (a delete candidate).

Three passes are timed, each on wall and CPU clocks: the harness's key strings alone, the
``Entry`` values built from them (what the listing builds per key), and the full diff over
freshly generated entries. ``keys_per_second["diff_*"]`` is source keys over (full - entries):
the merge, the order checks and the compare; ``entries_and_diff_*`` also charges building the
``Entry`` values. CPU-clock rates are what an idle core would give (this machine is shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

DIRS = 100
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def vm_hwm() -> int | None:
    """Peak RSS of this process since exec (``ru_maxrss`` would include the parent's)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize()


def _keys(n: int) -> Iterator[tuple[int, str]]:
    per_dir = math.ceil(n / DIRS)
    for d in range(DIRS):
        for i in range(d * per_dir, min(n, (d + 1) * per_dir)):
            yield i, f"d{d:02d}/key-{i:08d}"


def source(n: int) -> Iterator[object]:
    from dispatcher.diff import Entry
    for i, key in _keys(n):
        yield Entry(key=key, size=1000 + i % 5000, etag=f'"{i:032x}"', last_modified=WHEN)


def destination(n: int) -> Iterator[object]:
    from dispatcher.diff import Entry
    for i, key in _keys(n):
        if i % 10:
            size = 1000 + i % 5000 + (1 if i % 7 == 0 else 0)
            yield Entry(key=key, size=size, etag=f'"{i:032x}"', last_modified=WHEN)
        if i % 1000 == 999:  # sorts right after ``key``
            yield Entry(key=key + "-extra", size=1, etag='"x"', last_modified=WHEN)


def _timed(work: Iterator[object]) -> tuple[float, float]:
    """(wall, CPU) seconds to exhaust ``work``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in work:
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def _names(n: int) -> Iterator[object]:
    for _ in range(2):  # both listings' key strings, as the generators below build them
        yield from _keys(n)


def run(n: int) -> dict[str, object]:
    from dispatcher.diff import Mode, diff
    baseline = _rss_now()
    names = _timed(_names(n))
    entries = _timed(itertools.chain(source(n), destination(n)))
    decisions: Counter[str] = Counter()

    def decide() -> Iterator[object]:
        for decision in diff(source(n), destination(n), Mode.SIZE):  # type: ignore[arg-type]
            decisions[f"{decision.action.value}:{decision.reason}"] += 1
            yield decision

    total = _timed(decide())
    rate = {f"{what}_{clock}": round(n / max(t - base, 1e-9))
            for what, base_pair in (("diff", entries), ("entries_and_diff", names))
            for clock, t, base in (("wall", total[0], base_pair[0]),
                                   ("cpu", total[1], base_pair[1]))}
    return {"keys": n, "wall_seconds": round(total[0], 3), "cpu_seconds": round(total[1], 3),
            "harness_key_strings_cpu_seconds": round(names[1], 3),
            "entries_cpu_seconds": round(entries[1], 3),
            "keys_per_second": rate, "rss_after_imports": baseline,
            "peak_rss": vm_hwm() or 0,
            "decisions": dict(sorted(decisions.items()))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diffbench")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    result = json.dumps(run(args.keys))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(result)
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
