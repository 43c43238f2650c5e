"""The planner is pure: every rule is checked here without I/O."""

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from common.errors import Unsupported
from common.jobs import CopyJob
from common.limits import DATA_PARTS, GIB, MAX_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE, TIB
from common.settings import WorkerSettings
from worker.planner import Limits, Shortcut, Strategy, part_size_for, plan, shortcut, split

LIMITS = Limits(part_size=8 * MIB, multipart_threshold=16 * MIB)


@pytest.mark.parametrize("size", [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 16 * MIB])
def test_small_objects_stream_as_one_put(size: int) -> None:
    p = plan(size=size, server_side=False, limits=LIMITS)
    assert p.strategy is Strategy.STREAM_PUT
    assert p.parts == ()


def test_multipart_object_is_split_in_configured_parts() -> None:
    p = plan(size=40 * MIB, server_side=False, limits=LIMITS)
    assert p.strategy is Strategy.STREAM_MULTIPART
    assert [part.length for part in p.parts] == [8 * MIB] * 5
    assert p.parts[0].http_range == f"bytes=0-{8 * MIB - 1}"


def test_same_endpoint_small_is_copy_object_and_large_is_part_copy() -> None:
    assert plan(size=5 * GIB, server_side=True,
                limits=Limits(server_copy_threshold=5 * GIB)).strategy is Strategy.SERVER_COPY
    big = plan(size=5 * GIB + 1, server_side=True, limits=Limits(server_copy_threshold=5 * GIB))
    assert big.strategy is Strategy.SERVER_MULTIPART
    assert sum(p.length for p in big.parts) == 5 * GIB + 1


def test_copy_object_never_planned_above_5_gib_whatever_the_threshold() -> None:
    p = plan(size=5 * GIB + 1, server_side=True, limits=Limits(server_copy_threshold=50 * GIB))
    assert p.strategy is Strategy.SERVER_MULTIPART


def test_single_put_never_planned_above_5_gib() -> None:
    p = plan(size=5 * GIB + 1, server_side=False,
             limits=Limits(multipart_threshold=50 * GIB))
    assert p.strategy is Strategy.STREAM_MULTIPART


def test_5_gib_boundary_object_streams_in_parts_within_limits() -> None:
    p = plan(size=5 * GIB, server_side=False, limits=LIMITS)
    assert p.strategy is Strategy.STREAM_MULTIPART
    assert len(p.parts) == 320  # 16 MiB parts: 8 of them fit the default 128 MiB budget
    assert all(MIN_PART_SIZE <= part.length <= MAX_PART_SIZE for part in p.parts)


def test_part_size_grows_to_keep_9999_parts_and_the_last_part_number_for_the_claim() -> None:
    assert DATA_PARTS == MAX_PARTS - 1
    size = 1 * TIB
    ps = part_size_for(size, 8 * MIB)
    assert -(-size // ps) <= DATA_PARTS
    assert ps % MIB == 0


def test_too_large_object_is_unsupported_not_a_crash() -> None:
    with pytest.raises(Unsupported):
        plan(size=DATA_PARTS * MAX_PART_SIZE + 1, server_side=False, limits=Limits(
            max_object_size=MAX_PARTS * MAX_PART_SIZE * 2))
    with pytest.raises(Unsupported):
        plan(size=6 * TIB, server_side=False, limits=Limits(max_object_size=5 * TIB))


def test_plan_is_frozen() -> None:
    p = plan(size=40 * MIB, server_side=False, limits=LIMITS)
    with pytest.raises(AttributeError):
        p.size = 1  # type: ignore[misc]


@given(size=st.integers(min_value=1, max_value=DATA_PARTS * MAX_PART_SIZE),
       preferred=st.integers(min_value=1, max_value=6 * GIB))
def test_parts_cover_every_byte_once_within_s3_limits(size: int, preferred: int) -> None:
    ps = part_size_for(size, preferred)
    assert MIN_PART_SIZE <= ps <= MAX_PART_SIZE
    count = -(-size // ps)
    assert 1 <= count <= DATA_PARTS
    if size <= 50 * GIB:  # materialise only what is cheap
        parts = split(size, ps)
        assert parts[0].start == 0 and parts[-1].end == size - 1
        assert all(a.end + 1 == b.start for a, b in pairwise(parts))
        assert all(p.length == ps for p in parts[:-1]) and 0 < parts[-1].length <= ps
        assert [p.number for p in parts] == list(range(1, len(parts) + 1))


@pytest.mark.parametrize(("size", "budget", "expected"), [
    (2 * GIB, 128 * MIB, 16 * MIB),  # 256 parts of 8 MiB -> 128 of 16 MiB, 8 fit in flight
    (64 * MIB, 128 * MIB, 8 * MIB),  # few parts: unchanged
    (1 * GIB, 128 * MIB, 8 * MIB),  # exactly 128 parts: unchanged
    (50 * GIB, 128 * MIB, 16 * MIB),  # grows only while 8 parts still fit in the budget
    (50 * GIB, 1024 * MIB, 128 * MIB),
    (2 * GIB, 64 * MIB, 8 * MIB),  # a small budget keeps the configured size
])
def test_objects_of_many_parts_get_larger_parts_within_the_budget(
        size: int, budget: int, expected: int) -> None:
    limits = Limits(part_size=8 * MIB, part_budget=budget, multipart_threshold=16 * MIB)
    p = plan(size=size, server_side=False, limits=limits)
    assert p.part_size == expected
    assert sum(part.length for part in p.parts) == size
    assert p.part_size == 8 * MIB or p.part_size * 8 <= budget  # 8 in flight fit


def listed(size: int = 10, storage_class: str | None = "STANDARD",
           **options: object) -> CopyJob:
    opts: dict[str, object] = {"destination_absent": True}
    opts.update(options)
    return CopyJob.model_validate({
        "source": {"endpoint": "g", "bucket": "src", "key": "k", "size": size, "etag": '"e"',
                   "storage_class": storage_class},
        "destination": {"endpoint": "g", "bucket": "dst", "key": "k"}, "options": opts})


ONE_COPY = Shortcut(Strategy.SERVER_COPY, head_destination=False)


def test_one_copy_object_only_for_listed_first_attempts_that_need_no_head() -> None:
    limits = Limits(server_copy_threshold=100)
    for job in (listed(), listed(size=100)):
        assert shortcut(job, server_side=True, first_attempt=True, limits=limits) == ONE_COPY
    refused = [
        (listed(), False),  # a redelivery looks at the destination first
        (listed(size=101), True),  # above the threshold: parts
        (listed(storage_class=None), True),  # class unknown: CopyObject would not keep it
        (listed(storage_class="GLACIER"), True),  # archived: the HEAD says if restored
        (listed(storage_class="DEEP_ARCHIVE"), True),
        (listed(destination_absent=False), True),  # may already be there
        (listed(sequencer="0A"), True),  # events order by the destination's sequencer
        (listed(preserve_metadata=False), True),  # COPY would keep it
    ]
    for job, first in refused:
        assert shortcut(job, server_side=True, first_attempt=first, limits=limits) is None, job


def test_a_small_listed_object_is_one_get_and_one_put_with_the_head_it_needs() -> None:
    limits = Limits(multipart_threshold=16 * MIB)
    def cut(job: CopyJob, first: bool) -> Shortcut | None:
        return shortcut(job, server_side=False, first_attempt=first, limits=limits)

    assert cut(listed(size=16 * MIB), True) == Shortcut(Strategy.STREAM_PUT, False)
    assert cut(listed(), False) == Shortcut(Strategy.STREAM_PUT, True)  # redelivered: look
    assert cut(listed(destination_absent=False), True) == Shortcut(Strategy.STREAM_PUT, True)
    assert cut(listed(size=16 * MIB + 1), True) is None  # parts, after a HEAD
    assert cut(listed(verify_content=True), True) is None  # the source is looked at first
    unlisted = listed().model_copy(update={"source": listed().source.model_copy(
        update={"etag": None})})
    assert cut(unlisted, True) is None  # nothing to pin the GET to


def test_no_threshold_setting_sends_more_than_5_gib_in_one_request() -> None:
    huge = Limits(multipart_threshold=10 * GIB, server_copy_threshold=10 * GIB)
    for server_side in (False, True):
        assert shortcut(listed(size=6 * GIB), server_side=server_side, first_attempt=True,
                        limits=huge) is None
        assert plan(size=6 * GIB, server_side=server_side, limits=huge).strategy.multipart
    with pytest.raises(ValidationError, match="multipart_threshold"):
        WorkerSettings(multipart_threshold=6 * GIB)
    for name in ("part_size", "server_part_size"):
        with pytest.raises(ValidationError, match=name):
            WorkerSettings(**{name: 6 * GIB})
    with pytest.raises(ValidationError, match="server_copy_threshold"):
        WorkerSettings(server_copy_threshold=6 * GIB)
