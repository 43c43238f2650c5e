"""What becomes of a message once its jobs ran: its outcome, written to SQS, whole.

* done -> deleted; acks are batched (DeleteMessageBatch), a few batches in flight at once,
  each batch's ``Failed`` list checked;
* bad message, permanent error, archived source -> the dead-letter queue with a ``reason``
  attribute, then deleted; the message is never lost (a dead letter that cannot be sent
  leaves it to come back);
* transient -> released with a backoff (at least the failure's ``retry_after``);
* a bundle: each failed job to the dead-letter queue alone, as a single job; the jobs to try
  again in a new, delayed bundle that carries their attempts; then the bundle deleted, or, if
  that send fails, released whole (its finished jobs are skipped next time).

An outcome is written whole (:meth:`Settler.whole`): a drain deadline or a lost lease that
cancels its job neither cuts it short nor releases the message beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from common.jobs import Bundle, encode_bundle, item_body
from common.limits import SQS_MAX_BATCH, SQS_MAX_DELAY, SQS_MAX_VISIBILITY
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.leases import Lease
from worker.summary import Summary

log = get_logger(__name__)
MAX_ERROR_TEXT = 1000
ACKS_IN_FLIGHT = 4  # DeleteMessageBatch calls at once
# An ack waits this long for others to share its DeleteMessageBatch, and only while jobs are
# still running (when none is, no other ack is coming soon: the last job of a backfill, or a
# lone event, is acknowledged at once). Waiting costs nothing but the wait: the job's slot is
# free as soon as it finished, and its message stays hidden for the visibility timeout
# (at least 10 s). Fewer calls are fewer SQS requests to pay for, and less work for a queue
# that shares the machine: 16 copies finishing over 0.4 s took 5-7 calls at 0.05 s, 2 at 0.5 s.
ACK_LINGER_SECONDS = 0.5


def error_text(error: str) -> str:
    """An error as it may be logged or put in a dead letter: scrubbed, then bounded."""
    return scrub_text(error)[:MAX_ERROR_TEXT]


@dataclass(frozen=True)
class Verdict:
    """What one job's attempt means for its message."""

    action: Literal["ack", "dead", "retry"]
    route: str = "-"
    reason: str = ""
    error: str = ""
    retry_after: float = 0.0  # "retry": not before this many seconds


class Settler:
    """Writes outcomes to the job queue and the dead-letter queue. ``busy()`` says whether
    jobs are still running (an ack then waits a little for others to share its batch)."""

    def __init__(self, *, sqs: Any, queue_url: str, dlq_url: str, settings: WorkerSettings,
                 metrics: WorkerMetrics, summary: Summary, busy: Callable[[], bool]) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self._settings = settings
        self._metrics = metrics
        self._summary = summary
        self._busy = busy
        self._writing: set[asyncio.Task[None]] = set()  # outcomes being written
        self._acks: asyncio.Queue[Lease] = asyncio.Queue()
        self._ack_room = asyncio.Semaphore(ACKS_IN_FLIGHT)

    async def whole(self, lease: Lease, outcome: Coroutine[Any, Any, None]) -> None:
        """Write ``outcome`` whole, whatever cancels the caller; :meth:`written` waits for
        every one."""
        lease.settling = True
        task = asyncio.create_task(outcome)
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        await asyncio.shield(task)

    async def written(self) -> None:
        """Until every outcome being written is, and every ack sent."""
        await asyncio.gather(*self._writing, return_exceptions=True)
        await self._acks.join()

    def backoff(self, attempt: int, at_least: float = 0.0) -> int:
        """Seconds before a job tried ``attempt`` times is tried again: jittered, growing,
        at most a lease, but never less than ``at_least`` (what the failure asked for)."""
        jittered = min(self._settings.visibility_timeout,
                       int(random.uniform(1, 2 ** min(attempt, 8))))
        return min(SQS_MAX_VISIBILITY, max(jittered, math.ceil(at_least)))

    # -- a message's outcome ----------------------------------------------------------------

    async def single(self, lease: Lease, verdict: Verdict) -> None:
        """A single job's message: delete it, dead-letter it, or let it come back later."""
        if verdict.action == "ack":
            await self.ack(lease)
        elif verdict.action == "dead":
            await self.dead_letter(lease, verdict.reason, verdict.error, route=verdict.route)
        else:
            delay = self.backoff(lease.receive_count, verdict.retry_after)
            log.info("job_released", reason=verdict.reason,
                     error=error_text(verdict.error), retry_in=delay)
            await self.release(lease, delay=delay)

    async def bundle(self, lease: Lease, bundle: Bundle, attempt: int,
                     verdicts: list[Verdict]) -> None:
        """Each failed job to the dead-letter queue, the ones to try again in a new delayed
        bundle, then the bundle deleted; released whole if the new bundle cannot be sent."""
        pairs = list(zip(bundle.jobs, verdicts, strict=True))
        again = [item for item, v in pairs if v.action == "retry"]
        delay = self.backoff(attempt, max((v.retry_after for _, v in pairs
                                           if v.action == "retry"), default=0.0))
        again += await self._dead_letter_jobs(lease, bundle, attempt,
                                              [(i, v) for i, v in pairs if v.action == "dead"])
        if again and not await self._requeue(bundle, again, attempt, min(delay, SQS_MAX_DELAY)):
            await self.release(lease, delay=delay)
            return
        await self.ack(lease)

    async def _requeue(self, bundle: Bundle, items: list[Any], attempt: int,
                       delay: int) -> bool:
        """Put jobs to try again back onto the queue, delayed, with the attempts they had."""
        body = encode_bundle([item_body(i) for i in items], bundle_id=bundle.id,
                             attempts=attempt, limit=bundle.limit)
        try:
            await self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=body,
                                         DelaySeconds=delay)
        except Exception as exc:
            log.warning("requeue_failed", jobs=len(items), error=scrub_text(str(exc)))
            return False
        self._metrics.jobs_requeued.inc(len(items))
        log.info("jobs_requeued", jobs=len(items), attempts=attempt, retry_in=delay)
        return True

    # -- the dead-letter queue --------------------------------------------------------------

    @staticmethod
    def _dead_attributes(lease: Lease, reason: str, text: str, route: str, attempt: int,
                         bundle_id: str | None = None) -> dict[str, Any]:
        attributes = {
            "reason": {"DataType": "String", "StringValue": reason},
            "error": {"DataType": "String", "StringValue": text or reason},
            "route": {"DataType": "String", "StringValue": route},
            "receive_count": {"DataType": "Number", "StringValue": str(attempt)},
            "source_message_id": {"DataType": "String", "StringValue": lease.message_id},
        }
        if bundle_id is not None:
            attributes["bundle_id"] = {"DataType": "String", "StringValue": bundle_id}
        return attributes

    def _dead_lettered(self, reason: str, text: str, **context: Any) -> None:
        self._metrics.dead_letters.labels(reason).inc()
        self._summary.dead_letters[reason] += 1
        log.warning("job_dead_lettered", reason=reason, error=text, **context)

    async def dead_letter(self, lease: Lease, reason: str, error: str, *, route: str) -> None:
        """Copy the message to the DLQ with its reason, then delete it. Never loses it."""
        text = error_text(error)
        try:
            await self._sqs.send_message(
                QueueUrl=self._dlq_url, MessageBody=lease.body or "<empty>",
                MessageAttributes=self._dead_attributes(lease, reason, text, route,
                                                        lease.receive_count))
        except Exception as exc:
            log.error("dead_letter_failed", reason=reason, error=scrub_text(str(exc)))
            return  # leave the message: it comes back and is tried again
        self._dead_lettered(reason, text)
        await self.ack(lease)

    async def _dead_letter_jobs(self, lease: Lease, bundle: Bundle, attempt: int,
                                dead: list[tuple[Any, Verdict]]) -> list[Any]:
        """Each of a bundle's failed jobs to the DLQ as a message of its own (with its reason).
        Returns the jobs that could not be sent there: they go back onto the queue."""
        kept: list[Any] = []
        for start in range(0, len(dead), SQS_MAX_BATCH):
            chunk = dead[start:start + SQS_MAX_BATCH]
            texts = [error_text(v.error) for _, v in chunk]
            entries = [{"Id": str(n), "MessageBody": item_body(item),
                        "MessageAttributes": self._dead_attributes(
                            lease, v.reason, text, v.route, attempt, bundle.id)}
                       for n, ((item, v), text) in enumerate(zip(chunk, texts, strict=True))]
            try:
                answer = await self._sqs.send_message_batch(QueueUrl=self._dlq_url,
                                                            Entries=entries)
            except Exception as exc:
                log.error("dead_letter_failed", jobs=len(chunk), error=scrub_text(str(exc)))
                kept.extend(item for item, _ in chunk)
                continue
            failed = {int(f["Id"]) for f in answer.get("Failed", ())}
            for n, ((item, v), text) in enumerate(zip(chunk, texts, strict=True)):
                if n in failed:
                    kept.append(item)
                else:
                    job_id = item.get("id") if isinstance(item, dict) else None
                    self._dead_lettered(v.reason, text, job_id=job_id, route=v.route)
            if failed:
                log.error("dead_letter_failed", jobs=len(failed))
        return kept

    # -- the job queue ----------------------------------------------------------------------

    async def ack(self, lease: Lease) -> None:
        await self._acks.put(lease)

    async def release(self, lease: Lease, *, delay: int) -> None:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=lease.receipt, VisibilityTimeout=delay)
        except Exception as exc:
            log.warning("release_failed", error=scrub_text(str(exc)))

    async def keep_acking(self) -> None:
        """Send the acks in batches until cancelled (after :meth:`written`)."""
        batches: set[asyncio.Task[None]] = set()
        try:
            while True:
                batch = [await self._acks.get()]
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(ACK_LINGER_SECONDS):
                        while len(batch) < SQS_MAX_BATCH and (self._busy()
                                                               or not self._acks.empty()):
                            batch.append(await self._acks.get())
                await self._ack_room.acquire()
                task = asyncio.create_task(self._ack_batch(batch))
                batches.add(task)
                task.add_done_callback(batches.discard)
        finally:
            await asyncio.gather(*batches, return_exceptions=True)

    async def _ack_batch(self, batch: list[Lease]) -> None:
        try:
            await self._delete_batch(batch)
        finally:
            self._ack_room.release()
            for _ in batch:
                self._acks.task_done()

    async def _delete_batch(self, batch: list[Lease]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": lease.receipt}
                   for i, lease in enumerate(batch)]
        for attempt in range(3):
            try:
                response = await self._sqs.delete_message_batch(
                    QueueUrl=self._queue_url, Entries=entries)
            except Exception as exc:
                log.warning("ack_failed", error=scrub_text(str(exc)), attempt=attempt)
                await asyncio.sleep(0.2 * 2 ** attempt)
                continue
            failed = response.get("Failed", [])
            if failed:  # the message comes back; idempotency makes that harmless
                log.warning("ack_partially_failed", failed=len(failed),
                            codes=sorted({f.get("Code", "") for f in failed}))
            return
