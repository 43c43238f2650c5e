"""The planner: pure functions from what is known of a job to how it is copied.

It makes no calls; :mod:`worker.replicate` and :mod:`worker.transfer` only execute what it
decides, every threshold and S3 limit included. Two decisions:

* :func:`shortcut`, from the job alone (what its listing saw): a copy that needs no HEAD of
  the source. Within one store, a listed object at a destination the listing saw missing is
  one CopyObject (``server_copy``), pinned to the listed ETag, on its first attempt; across
  stores, a small listed object is one GET and one PUT (``stream_put``), with a HEAD of the
  destination beside the GET unless the listing saw it missing on this first attempt.
* :func:`plan`, once the source was looked at (HEAD):

  * same endpoint and credentials, server-side copy allowed: ``server_copy`` (CopyObject,
    <= 5 GiB and below ``server_copy_threshold``) or ``server_multipart`` (UploadPartCopy in
    parallel);
  * different endpoints: ``stream_put`` (one GET, one PUT) for small objects, otherwise
    ``stream_multipart`` (ranged GET -> UploadPart, parts in parallel, memory bounded by the
    worker's byte budget, no temporary files); objects of many parts get larger parts.

Part sizes honour S3's limits: each part 5 MiB..5 GiB (the last smaller), and at most 9,999
of them: part number 10,000 is the upload's claim, never data (:mod:`worker.multipart`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from common.errors import Unsupported
from common.jobs import CopyJob
from common.limits import (
    ARCHIVE_CLASSES,
    DATA_PARTS,
    GIB,
    MAX_COPY_OBJECT,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_SINGLE_PUT,
    MIB,
    MIN_PART_SIZE,
)


class Strategy(StrEnum):
    SERVER_COPY = "server_copy"
    SERVER_MULTIPART = "server_multipart"
    STREAM_PUT = "stream_put"
    STREAM_MULTIPART = "stream_multipart"

    @property
    def server_side(self) -> bool:
        return self in (Strategy.SERVER_COPY, Strategy.SERVER_MULTIPART)

    @property
    def multipart(self) -> bool:
        return self in (Strategy.SERVER_MULTIPART, Strategy.STREAM_MULTIPART)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Tunables; S3's own limits are constants in :mod:`common.limits`."""

    part_size: int = 8 * MIB
    part_budget: int = 16 * 8 * MIB  # buffered bytes per worker (max_parts x part_size)
    multipart_threshold: int = 16 * MIB
    server_copy_threshold: int = 1 * GIB
    server_part_size: int = 256 * MIB
    max_object_size: int = MAX_OBJECT_SIZE


@dataclass(frozen=True, slots=True)
class Part:
    """Part ``number`` (1-based) covers bytes ``start`` .. ``end`` inclusive."""

    number: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def http_range(self) -> str:
        return f"bytes={self.start}-{self.end}"


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    size: int
    part_size: int
    parts: tuple[Part, ...]


def part_size_for(size: int, preferred: int) -> int:
    """The smallest size >= ``preferred`` (and >= 5 MiB) that fits ``size`` in 9,999 parts.

    Rounded up to a whole MiB so part boundaries stay aligned; raises Unsupported when even
    5 GiB parts cannot hold the object.
    """
    if size > DATA_PARTS * MAX_PART_SIZE:
        raise Unsupported(f"object of {size} bytes exceeds {DATA_PARTS} parts of 5 GiB")
    chosen = max(preferred, MIN_PART_SIZE)
    needed = math.ceil(size / DATA_PARTS)
    if needed > chosen:
        chosen = math.ceil(needed / MIB) * MIB
    return min(chosen, MAX_PART_SIZE)


# Objects that would need more parts than this get larger ones (doubling), as long as at
# least MIN_PARTS_IN_FLIGHT of them still fit in the byte budget: fewer requests for the same
# memory (a 2 GiB object: 128 x 16 MiB rather than 256 x 8 MiB with a 128 MiB budget).
GROW_ABOVE_PARTS = 128
MIN_PARTS_IN_FLIGHT = 8


def preferred_part_size(size: int, limits: Limits) -> int:
    """``limits.part_size``, doubled while the object needs more than GROW_ABOVE_PARTS parts
    and MIN_PARTS_IN_FLIGHT of the larger ones still fit in ``limits.part_budget``."""
    chosen = limits.part_size
    while (math.ceil(size / chosen) > GROW_ABOVE_PARTS
           and 2 * chosen * MIN_PARTS_IN_FLIGHT <= limits.part_budget):
        chosen *= 2
    return chosen


def split(size: int, part_size: int) -> tuple[Part, ...]:
    """Cover ``size`` bytes with parts of ``part_size`` (the last one smaller)."""
    if size == 0:
        return ()
    return tuple(
        Part(number=i + 1, start=start, end=min(start + part_size, size) - 1)
        for i, start in enumerate(range(0, size, part_size)))


@dataclass(frozen=True)
class Shortcut:
    """A copy made from the listing's view of the source, without a HEAD of it."""

    strategy: Strategy  # SERVER_COPY (one CopyObject) or STREAM_PUT (one GET, one PUT)
    head_destination: bool  # whether the destination is looked at (beside the GET)


def shortcut(job: CopyJob, *, server_side: bool, first_attempt: bool,
             limits: Limits) -> Shortcut | None:
    """The copy that needs no HEAD of the source, or None: look first, then :func:`plan`.

    Only for a listed object (size and ETag known; every read is pinned to that ETag, and a
    source changed since takes the long way).
    """
    src, options = job.source, job.options
    if src.size is None or src.etag is None:
        return None
    seen_absent = first_attempt and options.destination_absent
    if server_side:
        one_copy = (seen_absent and options.sequencer is None and options.preserve_metadata
                    and src.size <= min(limits.server_copy_threshold, MAX_COPY_OBJECT)
                    and src.storage_class is not None
                    and src.storage_class not in ARCHIVE_CLASSES)
        return Shortcut(Strategy.SERVER_COPY, head_destination=False) if one_copy else None
    small = src.size <= min(limits.multipart_threshold, MAX_SINGLE_PUT)
    if not small or options.verify_content:  # verifying needs the source's HEAD
        return None
    return Shortcut(Strategy.STREAM_PUT, head_destination=not seen_absent)


def fits_layout(size: int, part_size: int | None, parts_count: int | None) -> bool:
    """Whether copying in the source's own part layout is possible within S3's limits."""
    if not part_size or not parts_count or part_size > MAX_PART_SIZE:
        return False
    count = math.ceil(size / part_size)
    return count == parts_count <= DATA_PARTS and (count == 1 or part_size >= MIN_PART_SIZE)


def plan(*, size: int, server_side: bool, limits: Limits,
         layout: int | None = None) -> Plan:
    """Choose how to copy an object of ``size`` bytes.

    ``layout`` is a part size to use exactly (the source's own, so its COMPOSITE checksum can
    be recomputed); the caller checks it with :func:`fits_layout`.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if size > limits.max_object_size:
        raise Unsupported(f"object of {size} bytes exceeds the maximum object size "
                          f"{limits.max_object_size}")
    if server_side:
        if size <= min(limits.server_copy_threshold, MAX_COPY_OBJECT):
            return Plan(Strategy.SERVER_COPY, size, size, ())
        ps = part_size_for(size, limits.server_part_size)
        return Plan(Strategy.SERVER_MULTIPART, size, ps, split(size, ps))
    if size <= min(limits.multipart_threshold, MAX_SINGLE_PUT):
        return Plan(Strategy.STREAM_PUT, size, size, ())
    ps = layout or part_size_for(size, preferred_part_size(size, limits))
    return Plan(Strategy.STREAM_MULTIPART, size, ps, split(size, ps))
