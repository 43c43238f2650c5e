"""A message is a lease: held while its jobs run, renewed, given up when it cannot be renewed.

SQS hides a received message for the visibility timeout (the lease). One heartbeat loop renews
every held lease each quarter of it (ChangeMessageVisibilityBatch, batches at once), never past
SQS's 12 h cap. A lease counts from SQS's answer, and one left unrenewed for half its length
is given up: its job is cancelled and the message left alone, for SQS to hand to another
worker when the lease ends. So no message is worked on by two of its holders at once, and what
a given-up job leaves on the store is quiet by then (:mod:`worker.multipart`). A job whose
outcome is being written (``settling``) is not given up: that write decides the message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.limits import SQS_MAX_BATCH, SQS_MAX_VISIBILITY
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings

log = get_logger(__name__)


@dataclass
class Lease:
    message_id: str
    receipt: str
    body: str
    receive_count: int
    weight: float = 1.0  # jobs of this message counted in the worker's load, not yet done
    received_at: float = field(default_factory=time.monotonic)
    watchdog: asyncio.TimerHandle | None = None  # gives the lease up if not renewed
    settling: bool = False  # its outcome is being written: only that decides the message

    @classmethod
    def of(cls, message: Mapping[str, Any], weight: float = 1.0) -> Lease:
        """The lease of a message ReceiveMessage just returned."""
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return cls(message["MessageId"], message["ReceiptHandle"], message.get("Body", ""),
                   count, weight)


class Leases:
    """The leases a worker holds, each with the task that runs its message."""

    def __init__(self, *, sqs: Any, queue_url: str, settings: WorkerSettings,
                 metrics: WorkerMetrics) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._settings = settings
        self._metrics = metrics
        self.held: dict[asyncio.Task[None], Lease] = {}

    def hold(self, lease: Lease, task: asyncio.Task[None]) -> None:
        """``task`` runs ``lease``'s message from now on; SQS started the lease when it
        answered, not when the (long) poll was sent."""
        self.held[task] = lease
        self._leased_until(lease, task, lease.received_at + self._settings.visibility_timeout)

    def let_go(self, task: asyncio.Task[None]) -> Lease | None:
        """The task ended: its lease is no longer watched (whatever became of the message)."""
        lease = self.held.pop(task, None)
        if lease is not None and lease.watchdog is not None:
            lease.watchdog.cancel()
        return lease

    async def keep_renewing(self) -> None:
        """Renew every held lease each quarter of its length, until cancelled."""
        interval = max(1.0, self._settings.visibility_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            leases = [(task, lease) for task, lease in self.held.items()
                      if time.monotonic() - lease.received_at < SQS_MAX_VISIBILITY - 60]
            await asyncio.gather(*(self._renew(leases[i:i + SQS_MAX_BATCH])
                                   for i in range(0, len(leases), SQS_MAX_BATCH)))

    async def _renew(self, leases: list[tuple[asyncio.Task[None], Lease]]) -> None:
        lease_seconds = self._settings.visibility_timeout
        entries = [{"Id": str(i), "ReceiptHandle": lease.receipt,
                    "VisibilityTimeout": lease_seconds}
                   for i, (_, lease) in enumerate(leases)]
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(lease_seconds / 4):
                response = await self._sqs.change_message_visibility_batch(
                    QueueUrl=self._queue_url, Entries=entries)
        except Exception as exc:
            log.warning("heartbeat_failed", error=scrub_text(str(exc)))
            return
        failed = {int(f["Id"]): f.get("Code") for f in response.get("Failed", [])}
        for i, (task, lease) in enumerate(leases):
            if i in failed:
                log.warning("heartbeat_entry_failed", code=failed[i])
            elif not task.done():
                self._leased_until(lease, task, sent_at + lease_seconds)

    def _leased_until(self, lease: Lease, task: asyncio.Task[None], expires: float) -> None:
        """The message is ours until ``expires`` (time.monotonic()): give it up when half its
        lease is left unrenewed."""
        if lease.watchdog is not None:
            lease.watchdog.cancel()
        give_up_at = expires - self._settings.upload_quiet_seconds
        loop = asyncio.get_running_loop()
        lease.watchdog = loop.call_at(loop.time() + give_up_at - time.monotonic(),
                                      self._lost, lease, task)

    def _lost(self, lease: Lease, task: asyncio.Task[None]) -> None:
        if task.done() or self.held.get(task) is not lease or lease.settling:
            return
        self._metrics.leases_lost.inc()
        log.warning("lease_lost", message_id=lease.message_id,
                    held_seconds=round(time.monotonic() - lease.received_at, 1))
        task.cancel()  # nothing is settled: the message is no longer ours to settle
