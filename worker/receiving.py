"""Receiving: capacity first, then ReceiveMessage.

A worker receives only while it holds fewer than ``max_jobs`` jobs, and asks for as many
messages as should fill that room, judged by how many jobs recent messages carried, or their
sender's bundle limit when larger (a bundle carries many). So a busy worker leaves messages
visible to other workers. Several receive loops share the room (``receivers``), so receiving
is not one round trip per 10 messages. A failed receive is retried with a growing pause and
makes the worker not ready (``/readyz``) until one succeeds. With ``exit_when_idle`` the loops
end once the queue holds nothing visible, delayed or in flight.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from common.health import Health
from common.limits import SQS_MAX_BATCH
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.leases import Lease

log = get_logger(__name__)
T = TypeVar("T")
MAX_AUTO_RECEIVERS = 4
RECENT_MESSAGES = 20  # how many messages' job counts predict the next ones'
Message = dict[str, Any]


class Receiver:
    """Receive loops over one queue. ``start(message, jobs_expected)`` takes each message
    received; ``held()`` says how many messages the worker holds; ``let_go(messages)`` hands
    back those received as a stop came."""

    def __init__(self, *, sqs: Any, queue_url: str, settings: WorkerSettings,
                 metrics: WorkerMetrics, health: Health,
                 start: Callable[[Message, float], None], held: Callable[[], int],
                 let_go: Callable[[list[Message]], Awaitable[None]]) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._start = start
        self._held = held
        self._let_go = let_go
        self._load = 0.0  # jobs held: received (estimated until read) and not yet done
        self._room_freed = asyncio.Event()
        self._recent: deque[int] = deque(maxlen=RECENT_MESSAGES)  # jobs per message
        self.stopping = asyncio.Event()
        self.idle_exit = False  # the loops ended because the queue was empty
        self.loops = settings.receivers or min(
            MAX_AUTO_RECEIVERS, math.ceil(settings.max_jobs / SQS_MAX_BATCH))

    async def run(self) -> None:
        """Until stopped (or idle): ``loops`` receive loops at once."""
        loops = [asyncio.create_task(self._loop()) for _ in range(self.loops)]
        try:
            await asyncio.gather(*loops)
        except BaseException:  # a bug in one loop: the others stop cleanly, handing back
            self.stopping.set()  # what they had just received
            await asyncio.gather(*loops, return_exceptions=True)
            raise

    # -- capacity ---------------------------------------------------------------------------

    async def _take_room(self) -> tuple[int, float]:
        """Wait until fewer than ``max_jobs`` jobs are held; then reserve room for as many
        messages as should fill it. Returns (messages to ask for, jobs expected of each)."""
        while self._load >= self._settings.max_jobs:
            self._room_freed.clear()
            await self._room_freed.wait()
        # until a message was read, assume bundles may come: one message per receive
        each = sum(self._recent) / len(self._recent) if self._recent else float(
            self._settings.max_jobs)
        free = self._settings.max_jobs - self._load
        n = max(1, min(SQS_MAX_BATCH, int(free // each)))
        self._load += n * each
        return n, each

    def give_back(self, jobs: float) -> None:
        self._load = max(0.0, self._load - jobs)
        self._load_changed()

    def _load_changed(self) -> None:
        """Wake the receive loops waiting for room, only when there is some: a full worker
        finishing a job (the usual case under load) wakes nobody."""
        if self._load < self._settings.max_jobs:
            self._room_freed.set()
        self._metrics.jobs_held.set(round(self._load))

    def weigh(self, lease: Lease, jobs: int, limit: int | None = None) -> None:
        """The message was read: count its real number of jobs instead of the estimate.
        The next messages are expected as large as the sender's bundle ``limit``: its
        bundles grow up to it."""
        self._recent.append(max(jobs, limit or 0))
        self._load += jobs - lease.weight
        lease.weight = jobs
        self._load_changed()

    def job_done(self, lease: Lease) -> None:
        lease.weight -= 1
        self.give_back(1)

    # -- one loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        idle = failures = 0
        while not self.stopping.is_set():
            room = await self._unless_stopped(self._take_room(), self._give_back_room)
            if room is None:
                break
            n, each = room
            try:
                messages = await self._unless_stopped(self._receive(n), self._let_go)
            except Exception as exc:
                self.give_back(n * each)
                failures += 1
                self._health.not_ready(f"ReceiveMessage failed {failures} time(s)")
                log.warning("receive_failed", error=scrub_text(str(exc)), failures=failures)
                await self._unless_stopped(asyncio.sleep(min(30.0, 0.5 * 2 ** failures)))
                continue
            failures = 0
            self.give_back((n - len(messages or ())) * each)
            if messages is None:
                break
            if messages:
                idle = 0
                for message in messages:
                    self._start(message, each)
                await asyncio.sleep(0)  # let them read their messages: the next estimate
            elif not self._held():
                idle += 1
                if self._settings.exit_when_idle and idle >= self._settings.idle_polls:
                    if await self._idle_exit_now():
                        break
                    idle = 0

    async def _give_back_room(self, room: tuple[int, float]) -> None:
        n, each = room
        self.give_back(n * each)

    async def _unless_stopped(self, aw: Awaitable[T],
                              undo: Callable[[T], Awaitable[None]] | None = None) -> T | None:
        """``aw``'s result, or None when a stop comes first: ``aw`` is then cancelled, and a
        result it still produced is handed to ``undo`` (room given back, messages let go)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        try:
            result = await task
        except (asyncio.CancelledError, Exception):
            return None
        if undo is not None:
            await undo(result)
        return None

    async def _idle_exit_now(self) -> bool:
        """After empty polls: end every receive loop if the queue holds nothing at all."""
        # another receive loop may have started jobs meanwhile
        if not await self._queue_drained() or self._held():
            return False
        if not self.stopping.is_set():
            log.info("queue_idle_exiting")
            self.idle_exit = True  # no drain deadline for what raced in
            self.stopping.set()  # ends the other receive loops too
        return True

    async def _queue_drained(self) -> bool:
        """True when SQS holds nothing visible, delayed or in flight (ours or others')."""
        try:
            response = await self._sqs.get_queue_attributes(
                QueueUrl=self._queue_url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed"])
        except Exception as exc:
            log.warning("queue_attributes_failed", error=scrub_text(str(exc)))
            return False
        return all(v == "0" for v in response.get("Attributes", {}).values())

    async def _receive(self, n: int) -> list[Message]:
        response = await self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=n,
            WaitTimeSeconds=self._settings.wait_time_seconds,
            VisibilityTimeout=self._settings.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"])
        messages: list[Message] = response.get("Messages", [])
        self._health.ready()
        self._metrics.messages_received.inc(len(messages))
        return messages
