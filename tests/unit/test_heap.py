"""A started worker or service freezes its start-up heap (common.heap): later full collections
walk only what was made since, and garbage made later is still collected."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
from common import heap
kept = [[i] for i in range(50_000)]   # what a start leaves alive: models, clients
frozen = heap.freeze()
walked = len(gc.get_objects())         # what a full collection still walks
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a                # a cycle made after the start, then dropped
del a, b
print(json.dumps({"frozen": frozen, "walked": walked, "collected": gc.collect()}))
"""


def test_the_start_up_heap_is_frozen_and_later_cycles_are_still_collected() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["frozen"] >= 50_000
    assert result["walked"] < 1_000
    assert result["collected"] >= 2
    assert f"heap_frozen                    objects={result['frozen']}" in out.stdout
