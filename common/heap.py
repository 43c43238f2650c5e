"""A long-running process's start-up heap, kept out of the garbage collector's way.

Once a worker, ``s3ferry serve`` or a local ``s3ferry backfill`` has started (modules
imported, botocore's service models loaded, clients open), ~120,000 tracked objects are
alive for the life of the process.
CPython's full collections walk all of them again and again: in a 5,000-object backfill the
worker made 4 full collections at ~60 ms each and the service 3 (measured 2026-11-22), CPU
taken from the copies on the same cores. :func:`freeze` moves what is alive at that moment
into the permanent generation (:func:`gc.freeze`), so later collections walk only what was
made since. Reference counting still frees everything as before; only a reference cycle
among the frozen start-up objects would be kept, once, for the life of the process.

Called by the command-line entry points, not by the library functions they run (tests run
many workers in one process).
"""

from __future__ import annotations

import gc

from common.logs import get_logger

log = get_logger(__name__)


def freeze() -> int:
    """Collect once, then freeze what survived; log and return how many objects that is."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap_frozen", objects=frozen)
    return frozen
