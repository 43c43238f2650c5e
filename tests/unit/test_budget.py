"""The worker's byte budget: what bounds its memory however parts and objects are sized."""

from __future__ import annotations

import asyncio
import random

import pytest

from worker.budget import ByteBudget

pytestmark = pytest.mark.timeout(30)
MIB = 1024 * 1024


async def test_buffered_bytes_never_exceed_the_budget() -> None:
    budget = ByteBudget(units=16, unit_bytes=8 * MIB)
    held = peak = done = 0
    rng = random.Random(4)

    async def buffer(nbytes: int) -> None:
        nonlocal held, peak, done
        async with budget.take(nbytes):
            held += budget.units_for(nbytes)
            peak = max(peak, held)
            await asyncio.sleep(rng.random() / 1000)
            held -= budget.units_for(nbytes)
        done += 1

    sizes = [rng.choice([0, 16 * 1024, 8 * MIB, 16 * MIB, 40 * MIB]) for _ in range(400)]
    async with asyncio.TaskGroup() as group:
        for size in sizes:
            group.create_task(buffer(size))
    assert done == len(sizes)
    assert 16 >= peak > 8  # full use of the budget, never more
    assert budget.free == 16


async def test_a_part_larger_than_the_budget_runs_alone() -> None:
    budget = ByteBudget(units=4, unit_bytes=8 * MIB)
    order: list[str] = []

    async def buffer(name: str, nbytes: int) -> None:
        async with budget.take(nbytes):
            order.append(f"+{name}")
            await asyncio.sleep(0.01)
            order.append(f"-{name}")

    async with asyncio.TaskGroup() as group:
        group.create_task(buffer("small", MIB))
        group.create_task(buffer("huge", 105 * MIB))  # S3 forces such parts on 1 TiB objects
    assert order == ["+small", "-small", "+huge", "-huge"]


async def test_a_waiting_large_part_is_not_overtaken_by_later_small_ones() -> None:
    budget = ByteBudget(units=4, unit_bytes=8 * MIB)
    order: list[str] = []

    async def buffer(name: str, nbytes: int) -> None:
        async with budget.take(nbytes):
            order.append(name)
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as group:
        group.create_task(buffer("first", 16 * MIB))
        await asyncio.sleep(0)
        group.create_task(buffer("large", 32 * MIB))  # needs all four units
        await asyncio.sleep(0)
        for i in range(3):
            group.create_task(buffer(f"small{i}", MIB))
    assert order[:2] == ["first", "large"]


@pytest.mark.parametrize("holder_leaves_first", [False, True],
                         ids=["cancelled-then-room", "room-then-cancelled"])
async def test_cancelled_waiters_give_back_nothing_they_do_not_hold(
        holder_leaves_first: bool) -> None:
    """A waiter cancelled while the holder leaves, in either order. When the holder runs
    first it wakes the queue with the cancelled waiter's entry still at its head (its future
    already cancelled): seen in a SIGTERM drain as ``ValueError: ... is not in deque``, the
    job counted as crashed."""
    budget = ByteBudget(units=2, unit_bytes=8 * MIB)
    release = asyncio.Event()

    async def hold() -> None:
        async with budget.take(16 * MIB):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    small = asyncio.create_task(hold())
    await asyncio.sleep(0)
    if holder_leaves_first:
        release.set()
        waiter.cancel()
    else:
        waiter.cancel()
        release.set()
    await asyncio.gather(holder, small)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.free == 2
