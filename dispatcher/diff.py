"""The backfill diff: two sorted listings in, copy/delete decisions out. Pure, streaming.

Both listings arrive in S3's order (UTF-8 byte order of the key) with keys relative to their
prefixes, so one merge pass pairs them up while holding one entry from each side: memory does
not grow with the bucket. A listing that is not strictly increasing raises :class:`OrderError`
instead of producing a wrong diff (some S3-compatible stores list in another order).

Compare modes, per key present on both sides:

* ``size``     - equal sizes are taken as equal objects (fast; one LIST per side, no HEADs);
* ``checksum`` - unequal sizes copy; equal sizes become ``check`` decisions that the caller
  settles with one HEAD per side via :func:`same_content` (full-object checksums where both
  sides have them, else the source ETag the worker stored in the copy's metadata);
* ``content``  - unequal sizes copy; equal sizes become ``verify`` copies: the worker reads the
  destination's bytes back and copies again only when their checksum is not the source's (a
  destination whose metadata says "copied" but whose bytes are wrong is found and healed);
* ``always``   - every wanted source object is copied (the worker still skips exact copies).

Keys only at the destination become ``delete`` decisions; the caller decides whether deletes
are enabled and in scope. Source objects that the route's filters reject are ``skip``ped and
never cause their destination counterpart to be deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from common.checksums import from_response
from common.fingerprint import holds_copy


class Mode(StrEnum):
    SIZE = "size"
    CHECKSUM = "checksum"
    CONTENT = "content"
    ALWAYS = "always"


class Action(StrEnum):
    COPY = "copy"
    DELETE = "delete"
    CHECK = "check"  # equal sizes in checksum mode: settle with HEADs
    SKIP = "skip"


# Entry and Decision are made once per listed key, so they are plain slotted dataclasses, not
# frozen ones: a frozen dataclass sets each field through object.__setattr__ (0.78 against
# 0.32 us for an Entry, Python 3.11). Nothing changes them once made.
@dataclass(slots=True)
class Entry:
    """One listed object; ``key`` is relative to the listing's prefix."""

    key: str
    size: int
    etag: str = ""
    last_modified: datetime | None = None
    storage_class: str = ""


@dataclass(slots=True)
class Decision:
    action: Action
    key: str
    reason: str  # missing | size_differs | always | verify | same_size | filtered | extra
    source: Entry | None = None
    destination: Entry | None = None


class OrderError(ValueError):
    """A listing was not in strictly increasing UTF-8 byte order."""


def _everything(_: Entry) -> bool:
    return True


def compare(source: Entry | None, destination: Entry | None, mode: Mode,
            wanted: Callable[[Entry], bool] = _everything) -> Decision:
    """The decision for one key, given what each side holds (at least one is not None)."""
    if source is None:
        assert destination is not None
        return Decision(Action.DELETE, destination.key, "extra", None, destination)
    key = source.key
    if not wanted(source):
        return Decision(Action.SKIP, key, "filtered", source, destination)
    if destination is None:
        return Decision(Action.COPY, key, "missing", source, None)
    if mode is Mode.ALWAYS:
        return Decision(Action.COPY, key, "always", source, destination)
    if source.size != destination.size:
        return Decision(Action.COPY, key, "size_differs", source, destination)
    if mode is Mode.SIZE:
        return Decision(Action.SKIP, key, "same_size", source, destination)
    if mode is Mode.CONTENT:
        return Decision(Action.COPY, key, "verify", source, destination)
    return Decision(Action.CHECK, key, "same_size", source, destination)


class _Order:
    """Checks that one side's keys strictly increase; returns each key's sort bytes."""

    def __init__(self, side: str) -> None:
        self._side = side
        self._last: bytes | None = None

    def __call__(self, entry: Entry | None) -> bytes | None:
        if entry is None:
            return None
        raw = entry.key.encode("utf-8", "surrogatepass")
        if self._last is not None and raw <= self._last:
            raise OrderError(f"{self._side} listing is not in UTF-8 byte order: "
                             f"{entry.key!r} came after a key that sorts after or equal to it")
        self._last = raw
        return raw


def _pick(s: bytes | None, d: bytes | None) -> tuple[bool, bool]:
    """Which sides the next decision consumes: (source, destination)."""
    if d is None:
        return True, False
    if s is None:
        return False, True
    return s <= d, d <= s


def diff(source: Iterable[Entry], destination: Iterable[Entry], mode: Mode,
         wanted: Callable[[Entry], bool] = _everything) -> Iterator[Decision]:
    """Merge two sorted listings into one decision per key, in key order."""
    src_it, dst_it = iter(source), iter(destination)
    src_order, dst_order = _Order("source"), _Order("destination")
    s = next(src_it, None)
    d = next(dst_it, None)
    s_key, d_key = src_order(s), dst_order(d)
    while s is not None or d is not None:
        take_s, take_d = _pick(s_key, d_key)
        yield compare(s if take_s else None, d if take_d else None, mode, wanted)
        if take_s:
            s = next(src_it, None)
            s_key = src_order(s)
        if take_d:
            d = next(dst_it, None)
            d_key = dst_order(d)


async def _first_of_both(src_it: AsyncIterator[Entry],
                         dst_it: AsyncIterator[Entry]) -> tuple[Entry | None, Entry | None]:
    """Both listings' first entries, fetched at once: the two first LISTs overlap instead of
    one waiting for the other (a round trip saved on every diff and shard)."""
    first_src = asyncio.ensure_future(anext(src_it, None))
    try:
        d = await anext(dst_it, None)
    except BaseException:
        first_src.cancel()
        await asyncio.gather(first_src, return_exceptions=True)
        raise
    return await first_src, d


async def adiff(source: AsyncIterable[Entry], destination: AsyncIterable[Entry], mode: Mode,
                wanted: Callable[[Entry], bool] = _everything) -> AsyncIterator[Decision]:
    """:func:`diff` over async listings (S3 pages arrive while the merge runs)."""
    src_it, dst_it = aiter(source), aiter(destination)
    src_order, dst_order = _Order("source"), _Order("destination")
    s, d = await _first_of_both(src_it, dst_it)
    s_key, d_key = src_order(s), dst_order(d)
    while s is not None or d is not None:
        take_s, take_d = _pick(s_key, d_key)
        yield compare(s if take_s else None, d if take_d else None, mode, wanted)
        if take_s:
            s = await anext(src_it, None)
            s_key = src_order(s)
        if take_d:
            d = await anext(dst_it, None)
            d_key = dst_order(d)


def same_content(source_head: Mapping[str, Any], destination_head: Mapping[str, Any], *,
                 same_store: bool = False) -> str:
    """Why the destination holds the source's bytes ("" when that cannot be shown): the
    same evidence the worker trusts before skipping a copy (:func:`holds_copy`)."""
    return holds_copy(destination_head, size=source_head.get("ContentLength"),
                      etag=str(source_head.get("ETag", "")),
                      checksum=from_response(source_head), same_store=same_store)
