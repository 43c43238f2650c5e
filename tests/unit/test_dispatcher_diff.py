"""The merge diff agrees with a dictionary model on awkward keys, in every compare mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.fingerprint import SOURCE_ETAG
from dispatcher.diff import Action, Decision, Entry, Mode, OrderError, adiff, diff, same_content

pytestmark = pytest.mark.timeout(60)

# Keys S3 accepts that trip naive code: separators, encodings, multi-byte and astral chars.
AWKWARD = st.text(
    alphabet=st.sampled_from([*"ab/ .+%-_~*?[]", "\u00e9", "\u4e2d", "\uffff",
                              "\U0001f600", "\x7f", "\x01"]),
    min_size=1, max_size=8)
LISTING = st.dictionaries(AWKWARD, st.integers(min_value=0, max_value=3), max_size=40)


def entries(listing: dict[str, int]) -> list[Entry]:
    return [Entry(key=k, size=v) for k, v in sorted(listing.items(), key=lambda kv:
                                                      kv[0].encode())]


def model(src: dict[str, int], dst: dict[str, int], mode: Mode,
          unwanted: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    out = []
    for key in sorted(src.keys() | dst.keys(), key=lambda k: k.encode()):
        if key not in src:
            out.append((key, "delete", "extra"))
        elif key in unwanted:
            out.append((key, "skip", "filtered"))
        elif key not in dst:
            out.append((key, "copy", "missing"))
        elif mode is Mode.ALWAYS:
            out.append((key, "copy", "always"))
        elif src[key] != dst[key]:
            out.append((key, "copy", "size_differs"))
        elif mode is Mode.SIZE:
            out.append((key, "skip", "same_size"))
        elif mode is Mode.CONTENT:
            out.append((key, "copy", "verify"))
        else:
            out.append((key, "check", "same_size"))
    return out


def flat(decisions: list[Decision]) -> list[tuple[str, str, str]]:
    return [(d.key, d.action.value, d.reason) for d in decisions]


@settings(max_examples=300, deadline=None)
@given(src=LISTING, dst=LISTING, mode=st.sampled_from(list(Mode)),
       data=st.data())
def test_diff_matches_the_model(src: dict[str, int], dst: dict[str, int], mode: Mode,
                                data: Any) -> None:
    unwanted = frozenset(data.draw(st.sets(st.sampled_from(sorted(src)))) if src else ())
    got = list(diff(entries(src), entries(dst), mode, lambda e: e.key not in unwanted))
    assert flat(got) == model(src, dst, mode, unwanted)


async def paged(items: list[Entry], sizes: list[int]) -> AsyncIterator[Entry]:
    """Yield like a paginated listing: bursts of arbitrary size with awaits between pages."""
    i = 0
    for size in sizes:
        await asyncio.sleep(0)
        for entry in items[i:i + size]:
            yield entry
        i += size
    for entry in items[i:]:
        yield entry


@settings(max_examples=100, deadline=None)
@given(src=LISTING, dst=LISTING, mode=st.sampled_from(list(Mode)),
       src_pages=st.lists(st.integers(0, 5), max_size=10),
       dst_pages=st.lists(st.integers(0, 5), max_size=10))
def test_async_diff_over_pages_equals_the_sync_diff(
        src: dict[str, int], dst: dict[str, int], mode: Mode, src_pages: list[int],
        dst_pages: list[int]) -> None:
    async def run() -> list[Decision]:
        return [d async for d in adiff(paged(entries(src), src_pages),
                                       paged(entries(dst), dst_pages), mode)]
    got = asyncio.new_event_loop()
    try:
        decisions = got.run_until_complete(run())
    finally:
        got.close()
    assert decisions == list(diff(entries(src), entries(dst), mode))


def test_keys_are_merged_in_utf8_byte_order_not_by_code_unit() -> None:
    # "\uffff" sorts before an astral character in UTF-8 (and in code points) but after it
    # in UTF-16, which is the order Java and JavaScript tools would use.
    src = [Entry("\uffff", 1), Entry("\U0001f600", 1)]
    dst = [Entry("\uffff", 1), Entry("\U0001f600", 2)]
    got = list(diff(src, dst, Mode.SIZE))
    assert [(d.key, d.action) for d in got] == [("\uffff", Action.SKIP),
                                                ("\U0001f600", Action.COPY)]


@pytest.mark.parametrize("side", ["source", "destination"])
def test_out_of_order_listing_is_refused(side: str) -> None:
    bad = [Entry("b", 1), Entry("a", 1)]
    good = [Entry("a", 1), Entry("b", 1)]
    src, dst = (bad, good) if side == "source" else (good, bad)
    with pytest.raises(OrderError, match=side):
        list(diff(src, dst, Mode.SIZE))


def test_duplicate_key_in_a_listing_is_refused() -> None:
    with pytest.raises(OrderError):
        list(diff([Entry("a", 1), Entry("a", 1)], [], Mode.SIZE))


def test_filtered_source_object_protects_its_copy_from_delete() -> None:
    got = list(diff([Entry("keep.tmp", 1)], [Entry("keep.tmp", 5), Entry("old", 1)],
                    Mode.SIZE, lambda e: not e.key.endswith(".tmp")))
    assert flat(got) == [("keep.tmp", "skip", "filtered"), ("old", "delete", "extra")]


def test_diff_is_lazy() -> None:
    """Nothing is read ahead: the merge holds one entry per side."""
    pulled: list[str] = []

    def listing() -> Any:
        for k in ("a", "b", "c", "d"):
            pulled.append(k)
            yield Entry(k, 1)

    it = diff(listing(), iter(()), Mode.SIZE)
    next(it)
    assert pulled == ["a"]
    next(it)
    assert pulled == ["a", "b"]


HEAD = {"ContentLength": 5, "ETag": '"abc"'}


@pytest.mark.parametrize(("source", "destination", "expected"), [
    (HEAD, {"ContentLength": 5, "Metadata": {SOURCE_ETAG: "abc"}}, "fingerprint"),
    (HEAD, {"ContentLength": 5, "Metadata": {SOURCE_ETAG: "old"}}, ""),
    (HEAD, {"ContentLength": 5, "ETag": '"abc"'}, ""),  # ETags are not proof across stores
    (HEAD | {"ChecksumCRC32": "AAAAAA==", "ChecksumType": "FULL_OBJECT"},
     {"ContentLength": 5, "ChecksumCRC32": "AAAAAA==", "ChecksumType": "FULL_OBJECT"},
     "checksum"),
    (HEAD | {"ChecksumCRC32": "AAAAAA==-2", "ChecksumType": "COMPOSITE"},
     {"ContentLength": 5, "ChecksumCRC32": "AAAAAA==-2", "ChecksumType": "COMPOSITE"}, ""),
    (HEAD | {"ChecksumCRC32": "AAAAAA=="},
     {"ContentLength": 5, "ChecksumCRC32": "AAAAAB=="}, ""),
    (HEAD, {"ContentLength": 6, "Metadata": {SOURCE_ETAG: "abc"}}, ""),
])
def test_same_content_trusts_fingerprints_and_full_object_checksums_only(
        source: dict[str, Any], destination: dict[str, Any], expected: str) -> None:
    assert same_content(source, destination) == expected


def test_equal_etags_prove_content_only_within_one_store() -> None:
    dest = {"ContentLength": 5, "ETag": '"abc"'}
    assert same_content(HEAD, dest, same_store=True) == "etag"
    assert same_content(HEAD, dest, same_store=False) == ""
    assert same_content(HEAD, dest | {"ContentLength": 6}, same_store=True) == ""
    assert same_content(HEAD, dest | {"ETag": '"abd"'}, same_store=True) == ""


async def test_both_first_pages_are_asked_for_at_once() -> None:
    """The destination's first LIST does not wait for the source's first page."""
    asked: list[str] = []
    both_asked = asyncio.Event()

    async def listing(side: str, entries_: list[Entry]) -> AsyncIterator[Entry]:
        asked.append(side)
        if len(asked) == 2:
            both_asked.set()
        await asyncio.wait_for(both_asked.wait(), timeout=5)  # a page arrives only then
        for entry in entries_:
            yield entry

    got = [d async for d in adiff(listing("source", [Entry("a", 1), Entry("b", 1)]),
                                  listing("destination", [Entry("b", 2)]), Mode.SIZE)]
    assert sorted(asked) == ["destination", "source"]
    assert [(d.key, d.action) for d in got] == [("a", Action.COPY), ("b", Action.COPY)]


@pytest.mark.parametrize("failing", ["source", "destination"])
async def test_a_failed_first_page_fails_the_diff_and_leaves_nothing_running(
        failing: str) -> None:
    cancelled: list[str] = []

    async def listing(side: str) -> AsyncIterator[Entry]:
        try:
            await asyncio.sleep(0)  # both have started
            if side == failing:
                raise OSError(f"{side} listing failed")
            await asyncio.sleep(0.01)
            yield Entry("a", 1)
        except asyncio.CancelledError:
            cancelled.append(side)
            raise

    with pytest.raises(OSError, match=f"{failing} listing failed"):
        async for _ in adiff(listing("source"), listing("destination"), Mode.SIZE):
            pass
    await asyncio.sleep(0.05)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert cancelled == (["source"] if failing == "destination" else [])
