"""``server_copy_budget``: the bytes a worker has the store copy server-side at once.

The store here is a stand-in that only counts what it is copying at each moment; what it
proves is the worker's side (how many bytes it asks a store to copy at once), which a real
store cannot report. The copies themselves are checked against LocalStack in
tests/integration/test_worker_copy.py.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest
from pydantic import ValidationError

from common.limits import MIB
from common.metrics import WorkerMetrics
from common.retry import RetryPolicy
from common.settings import Endpoint, WorkerSettings
from worker.budget import ByteBudget
from worker.main import copy_budget_from
from worker.planner import Plan, Strategy, split
from worker.source import SourceObject
from worker.transfer import Destination, Transfer

pytestmark = pytest.mark.timeout(30)


class CountingStore:
    """Answers CopyObject and UploadPartCopy after a short random wait, counting the bytes
    it is copying at once (the peak) and every copy it finished."""

    def __init__(self, sizes: dict[str, int], seed: int) -> None:
        self.sizes = sizes
        self.copying = self.peak = 0
        self.metrics = WorkerMetrics()
        self.gauge_wrong: list[tuple[float, int]] = []  # (gauge, copying) when they differ
        self.copied: list[str] = []
        self.parts: list[tuple[str, int]] = []
        self._rng = random.Random(seed)

    async def _copy(self, nbytes: int) -> None:
        self.copying += nbytes
        self.peak = max(self.peak, self.copying)
        shown = self.metrics.server_copy_bytes._value.get()
        if shown != self.copying:
            self.gauge_wrong.append((shown, self.copying))
        try:
            await asyncio.sleep(self._rng.random() / 500)
        finally:
            self.copying -= nbytes

    async def copy_object(self, *, Key: str, CopySource: dict[str, str],
                          **_: Any) -> dict[str, Any]:
        await self._copy(self.sizes[CopySource["Key"]])
        self.copied.append(Key)
        return {"CopyObjectResult": {"ETag": '"e"'}}

    async def list_multipart_uploads(self, **_: Any) -> dict[str, Any]:
        return {"Uploads": []}

    async def list_parts(self, **_: Any) -> dict[str, Any]:
        return {"Parts": []}

    async def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "u"}

    async def upload_part_copy(self, *, Key: str, PartNumber: int, CopySourceRange: str,
                               **_: Any) -> dict[str, Any]:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", CopySourceRange)
        assert match is not None
        await self._copy(int(match[2]) - int(match[1]) + 1)
        self.parts.append((Key, PartNumber))
        return {"CopyPartResult": {"ETag": f'"p{PartNumber}"'}}

    async def complete_multipart_upload(self, *, Key: str, **_: Any) -> dict[str, Any]:
        self.copied.append(Key)
        return {"ETag": '"m-2"'}

    async def abort_multipart_upload(self, **_: Any) -> None:
        raise AssertionError("no upload should be aborted")


class Source:
    def __init__(self, key: str) -> None:
        self.key = key

    def copy_source(self) -> dict[str, str]:
        return {"Bucket": "src", "Key": self.key}


def transfer(store: CountingStore, copy_budget: ByteBudget | None) -> Transfer:
    return Transfer(budget=ByteBudget(units=16, unit_bytes=8 * MIB), metrics=store.metrics,
                    retry=RetryPolicy(attempts=1, max_seconds=1), copy_budget=copy_budget)


async def copy_all(t: Transfer, store: CountingStore, part_size: int) -> None:
    """Every object at once: small ones by CopyObject, those above 40 MiB in parts."""
    endpoint = Endpoint(name="store", checksums="when_required")

    async def one(key: str, size: int) -> None:
        dest = Destination(client=store, endpoint=endpoint, bucket="dst", key=key)
        src = SourceObject(size=size, etag='"e"')
        if size <= 40 * MIB:
            plan = Plan(Strategy.SERVER_COPY, size, size, ())
        else:
            plan = Plan(Strategy.SERVER_MULTIPART, size, part_size, split(size, part_size))
        await t.execute(plan, Source(key), src, dest, {}, final_attempt=True)

    async with asyncio.TaskGroup() as group:
        for key, size in store.sizes.items():
            group.create_task(one(key, size))


SIZES = [0, 1, 16 * 1024, MIB, 5 * MIB, 64 * MIB, 64 * MIB + 7, 300 * MIB]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_store_never_copies_more_than_the_budget_at_once(seed: int) -> None:
    rng = random.Random(seed)
    sizes = {f"k{i}": rng.choice(SIZES[:-1]) for i in range(60)}
    store = CountingStore(sizes, seed)
    budget = copy_budget_from(WorkerSettings(server_copy_budget=256 * MIB))
    assert budget is not None

    await copy_all(transfer(store, budget), store, part_size=32 * MIB)

    assert sorted(store.copied) == sorted(sizes)  # every object copied, once
    assert 128 * MIB < store.peak <= 256 * MIB  # the budget is used, never exceeded
    assert budget.free == budget.units
    # the gauge showed what the store was copying at every request, and is back at 0
    assert store.gauge_wrong == []
    assert store.metrics.server_copy_bytes._value.get() == 0


async def test_an_object_larger_than_the_budget_is_copied_alone() -> None:
    store = CountingStore({"giant": 300 * MIB, "small": MIB}, seed=4)
    budget = copy_budget_from(WorkerSettings(server_copy_budget=100 * MIB))

    await copy_all(transfer(store, budget), store, part_size=300 * MIB)  # one part of 300 MiB

    assert sorted(store.copied) == ["giant", "small"]
    assert store.peak == 300 * MIB  # nothing beside it


async def test_parts_of_one_object_share_the_budget() -> None:
    store = CountingStore({"big": 1000 * MIB}, seed=5)
    budget = copy_budget_from(WorkerSettings(server_copy_budget=200 * MIB))

    await copy_all(transfer(store, budget), store, part_size=50 * MIB)

    assert len(store.parts) == 20 and store.copied == ["big"]
    assert store.peak == 200 * MIB  # four 50 MiB parts at a time


async def test_without_a_budget_all_copies_run_at_once() -> None:
    sizes = {f"k{i}": 40 * MIB for i in range(16)}
    store = CountingStore(sizes, seed=6)
    assert copy_budget_from(WorkerSettings()) is None

    await copy_all(transfer(store, None), store, part_size=32 * MIB)

    assert store.peak == 16 * 40 * MIB
    assert store.gauge_wrong == []


@pytest.mark.parametrize("value", [1, MIB - 1])
def test_a_budget_below_one_mebibyte_is_refused(value: int) -> None:
    with pytest.raises(ValidationError, match="server_copy_budget is 0"):
        WorkerSettings(server_copy_budget=value)
