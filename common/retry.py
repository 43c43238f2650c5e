"""Retry classified transient errors with jittered exponential backoff, bounded twice.

Only :class:`common.errors.RetryNow` is retried; everything else propagates at once, so expired
credentials or access denied are never hammered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from common.errors import RetryNow

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    attempts: int = 5
    max_seconds: float = 30.0
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
        cap = min(self.max_delay, self.base_delay * (2 ** attempt))
        return random.uniform(0, cap)


OnRetry = Callable[[RetryNow, int], None]


async def retrying(call: Callable[[], Awaitable[T]], policy: RetryPolicy,
                   on_retry: OnRetry | None = None) -> T:
    """Run ``call`` until it succeeds, raises a non-transient error, or the budget is spent."""
    deadline = time.monotonic() + policy.max_seconds
    attempt = 0
    while True:
        try:
            return await call()
        except RetryNow as exc:
            attempt += 1
            delay = policy.delay(attempt)
            if attempt >= policy.attempts or time.monotonic() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            await asyncio.sleep(delay)
