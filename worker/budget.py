"""The process-wide budget of buffered bytes: what bounds a worker's memory.

The budget is ``units`` pieces of ``unit_bytes`` (``max_parts`` x ``part_size``). A buffer
takes as many units as it needs (a 16 MiB part two units of 8 MiB; a small object one), at
most all of them, so buffered bytes stay within the budget, or within one buffer when a single
part is larger than the whole budget (S3's 10,000-part limit forces that on huge objects).
Waiters are served in arrival order: a large part is not starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress


class ByteBudget:
    """A weighted, first-come-first-served semaphore over buffered bytes."""

    def __init__(self, *, units: int, unit_bytes: int) -> None:
        if units < 1 or unit_bytes < 1:
            raise ValueError("a budget needs at least one unit of at least one byte")
        self.units = units
        self.unit_bytes = unit_bytes
        self._free = units
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def free(self) -> int:
        return self._free

    def units_for(self, nbytes: int) -> int:
        """Units a buffer of ``nbytes`` takes: at least one, at most the whole budget."""
        return max(1, min(self.units, math.ceil(nbytes / self.unit_bytes)))

    @asynccontextmanager
    async def take(self, nbytes: int) -> AsyncIterator[None]:
        """Hold room for ``nbytes`` while the block runs."""
        n = self.units_for(nbytes)
        await self._acquire(n)
        try:
            yield
        finally:
            self._release(n)

    async def _acquire(self, n: int) -> None:
        if not self._waiters and self._free >= n:
            self._free -= n
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(n)  # granted as we were cancelled: give it back
            else:
                with suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # a smaller waiter behind us may fit now
            raise

    def _release(self, n: int) -> None:
        self._free += n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._free:
            n, granted = self._waiters.popleft()
            if granted.done():  # cancelled, its task not yet run: it takes nothing
                continue
            self._free -= n
            granted.set_result(None)
