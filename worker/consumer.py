"""The SQS side of the worker: leases in, outcomes out.

* Capacity first: a job slot is acquired before ReceiveMessage, so a busy worker never holds
  messages it cannot start (they stay visible to other workers). Several receive loops share
  the slots (``receivers``), so receiving is not one round trip per 10 messages.
* A message is a lease: a short visibility timeout, extended by one heartbeat loop for every
  message in flight (ChangeMessageVisibilityBatch), never past SQS's 12 h cap.
* Acks are batched (DeleteMessageBatch), a few batches in flight at once, and each batch's
  ``Failed`` list is checked.
* Outcomes: done -> delete; bad message / permanent error / archived source -> dead-letter queue
  with a ``reason`` attribute, then delete; transient -> release with a backoff, and to the
  dead-letter queue once ``max_attempts`` receives are spent; vanished source -> recorded, delete.
* Shutdown, in order: stop receiving -> drain until the deadline -> release what is unfinished
  (visibility 0) -> flush acks -> return. Acks and dead-lettering run under ``asyncio.shield``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from common.errors import (
    BadMessage,
    GiveUp,
    Redeliver,
    RetryNow,
    SourceArchived,
    SourceVanished,
)
from common.jobs import CopyJob, decode
from common.limits import SQS_MAX_BATCH, SQS_MAX_VISIBILITY
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.replicate import JobResult, Replicator

log = get_logger(__name__)
MAX_ERROR_TEXT = 1000
MAX_AUTO_RECEIVERS = 4
ACKS_IN_FLIGHT = 4  # DeleteMessageBatch calls at once


@dataclass
class Lease:
    message_id: str
    receipt: str
    body: str
    receive_count: int
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Summary:
    """What a worker did, for ``--exit-when-idle`` runs and the demo."""

    results: Counter[str] = field(default_factory=Counter)
    verified: Counter[str] = field(default_factory=Counter)
    strategies: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    bytes_copied: int = 0

    def add(self, other: Mapping[str, Any]) -> None:
        """Add another worker's summary, as ``--summary-json`` wrote it."""
        for name in ("results", "verified", "strategies", "skipped", "dead_letters"):
            getattr(self, name).update(other.get(name) or {})
        self.bytes_copied += int(other.get("bytes_copied") or 0)

    def as_dict(self) -> dict[str, Any]:
        return {"results": dict(self.results), "verified": dict(self.verified),
                "strategies": dict(self.strategies), "skipped": dict(self.skipped),
                "dead_letters": dict(self.dead_letters), "bytes_copied": self.bytes_copied}


class Consumer:
    def __init__(self, *, sqs: Any, queue_url: str, dlq_url: str, replicator: Replicator,
                 settings: WorkerSettings, metrics: WorkerMetrics) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self._replicator = replicator
        self._settings = settings
        self._metrics = metrics
        self._slots = asyncio.Semaphore(settings.max_jobs)
        self._stopping = asyncio.Event()
        self._idle_exit = False
        self._tasks: dict[asyncio.Task[None], Lease] = {}
        self._acks: asyncio.Queue[Lease] = asyncio.Queue()
        self._ack_room = asyncio.Semaphore(ACKS_IN_FLIGHT)
        self.receivers = settings.receivers or min(
            MAX_AUTO_RECEIVERS, -(-settings.max_jobs // SQS_MAX_BATCH))
        self.summary = Summary()

    def stop(self) -> None:
        """Begin a clean shutdown (called from the SIGTERM handler)."""
        if not self._stopping.is_set():
            log.info("shutdown_requested", in_flight=len(self._tasks))
            self._stopping.set()

    # -- main loop ------------------------------------------------------------------------

    async def run(self) -> Summary:
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        acker = asyncio.create_task(self._ack_loop())
        try:
            await self._receive_loops()
            await self._drain()
        finally:
            heartbeat.cancel()
            await self._acks.join()
            acker.cancel()
            await asyncio.gather(heartbeat, acker, return_exceptions=True)
        return self.summary

    async def _receive_loops(self) -> None:
        loops = [asyncio.create_task(self._receive_loop()) for _ in range(self.receivers)]
        try:
            await asyncio.gather(*loops)
        except BaseException:  # a bug in one loop: the others stop cleanly, handing back
            self._stopping.set()  # what they had just received
            await asyncio.gather(*loops, return_exceptions=True)
            raise

    async def _take_slots(self) -> int:
        """Wait for one free job slot, then take every other free one (up to a batch)."""
        await self._slots.acquire()
        taken = 1
        while taken < SQS_MAX_BATCH and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    def _give_back(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _receive_loop(self) -> None:
        idle = 0
        failures = 0
        while not self._stopping.is_set():
            slots = await self._until_stopped(self._take_slots())
            if slots is None:
                break
            try:
                messages = await self._until_stopped(self._receive(slots))
                failures = 0
            except Exception as exc:
                self._give_back(slots)
                failures += 1
                log.warning("receive_failed", error=scrub_text(str(exc)), failures=failures)
                await self._until_stopped(asyncio.sleep(min(30.0, 0.5 * 2 ** failures)))
                continue
            if messages is None:
                self._give_back(slots)
                break
            self._give_back(slots - len(messages))
            if messages:
                idle = 0
                for message in messages:
                    self._start(message)
            elif not self._tasks:
                idle += 1
                if self._settings.exit_when_idle and idle >= self._settings.idle_polls:
                    if await self._idle_exit_now():
                        break
                    idle = 0

    async def _idle_exit_now(self) -> bool:
        """After empty polls: end every receive loop if the queue holds nothing at all."""
        # another receive loop may have started jobs meanwhile
        if not await self._queue_drained() or self._tasks:
            return False
        if not self._stopping.is_set():
            log.info("queue_idle_exiting")
            self._idle_exit = True  # no drain deadline for what raced in
            self._stopping.set()  # ends the other receive loops too
        return True

    async def _until_stopped(self, aw: Any) -> Any:
        """Await ``aw`` unless a stop comes first (then cancel it and return None)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            result = await task
            if isinstance(result, int):  # slots acquired while stopping: give them back
                self._give_back(result)
            elif isinstance(result, list):
                for message in result:  # received while stopping: let them go at once
                    await self._release(self._lease(message), delay=0)
        return None

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

    async def _receive(self, n: int) -> list[dict[str, Any]]:
        response = await self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=n,
            WaitTimeSeconds=self._settings.wait_time_seconds,
            VisibilityTimeout=self._settings.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"])
        messages: list[dict[str, Any]] = response.get("Messages", [])
        self._metrics.messages_received.inc(len(messages))
        return messages

    @staticmethod
    def _lease(message: dict[str, Any]) -> Lease:
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return Lease(message["MessageId"], message["ReceiptHandle"], message.get("Body", ""),
                     count)

    def _start(self, message: dict[str, Any]) -> None:
        lease = self._lease(message)
        task = asyncio.create_task(self._handle(lease))
        self._tasks[task] = lease
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slots.release()

    # -- one message ----------------------------------------------------------------------

    async def _handle(self, lease: Lease) -> None:
        structlog.contextvars.bind_contextvars(message_id=lease.message_id,
                                               receive_count=lease.receive_count)
        self._metrics.jobs_in_flight.inc()
        try:
            await self._process(lease)
        finally:
            self._metrics.jobs_in_flight.dec()

    async def _process(self, lease: Lease) -> None:
        try:
            job = decode(lease.body)
        except BadMessage as exc:
            await asyncio.shield(self._dead_letter(lease, exc.reason, str(exc), route="-"))
            return
        structlog.contextvars.bind_contextvars(job_id=job.id, route=job.route, kind=job.kind)
        final = lease.receive_count >= self._settings.max_attempts
        try:
            if isinstance(job, CopyJob):
                result = await self._replicator.copy(
                    job, final_attempt=final, first_attempt=lease.receive_count == 1)
            else:
                result = await self._replicator.delete(job)
        except SourceVanished as exc:
            self._record(job.route, "vanished")
            log.info("source_vanished", reason=exc.reason)
            await asyncio.shield(self._ack(lease))
        except (SourceArchived, GiveUp) as exc:
            result_name = "archived" if isinstance(exc, SourceArchived) else "failed"
            self._record(job.route, result_name)
            await asyncio.shield(self._dead_letter(lease, exc.reason, str(exc), route=job.route))
        except (Redeliver, RetryNow) as exc:
            await asyncio.shield(self._retry_later(lease, job.route, exc.reason, str(exc), final))
        except Exception as exc:  # a bug of ours: never crash the worker on one message
            log.exception("job_crashed")
            await asyncio.shield(self._retry_later(
                lease, job.route, "internal_error", f"{type(exc).__name__}: {exc}", final))
        else:
            self._succeeded(job.route, result)
            await asyncio.shield(self._ack(lease))

    def _record(self, route: str, result: str) -> None:
        self._metrics.objects.labels(route, result).inc()
        self.summary.results[result] += 1

    def _succeeded(self, route: str, result: JobResult) -> None:
        self._record(route, result.result)
        if result.result == "copied":
            self._metrics.bytes_copied.labels(route).inc(result.bytes)
            self._metrics.verified.labels(result.verified).inc()
            self.summary.bytes_copied += result.bytes
            self.summary.verified[result.verified] += 1
            self.summary.strategies[result.strategy] += 1
        elif result.result == "skipped":
            self.summary.skipped[result.reason] += 1
        log.info(f"job_{result.result}", strategy=result.strategy or None,
                 verified=result.verified or None, reason=result.reason or None,
                 bytes=result.bytes, resumed=result.resumed or None)

    async def _retry_later(self, lease: Lease, route: str, reason: str, error: str,
                           final: bool) -> None:
        if final:
            self._record(route, "failed")
            await self._dead_letter(lease, "retries_exhausted", f"{reason}: {error}",
                                    route=route)
            return
        self._record(route, "retried")
        delay = min(self._settings.visibility_timeout,
                    int(random.uniform(1, 2 ** min(lease.receive_count, 8))))
        log.info("job_released", reason=reason, error=scrub_text(error)[:MAX_ERROR_TEXT],
                 retry_in=delay)
        await self._release(lease, delay=delay)

    # -- SQS writes -----------------------------------------------------------------------

    async def _dead_letter(self, lease: Lease, reason: str, error: str, *, route: str) -> None:
        """Copy the message to the DLQ with its reason, then delete it. Never loses it."""
        text = scrub_text(error)[:MAX_ERROR_TEXT]
        attributes = {
            "reason": {"DataType": "String", "StringValue": reason},
            "error": {"DataType": "String", "StringValue": text or reason},
            "route": {"DataType": "String", "StringValue": route},
            "receive_count": {"DataType": "Number", "StringValue": str(lease.receive_count)},
            "source_message_id": {"DataType": "String", "StringValue": lease.message_id},
        }
        try:
            await self._sqs.send_message(QueueUrl=self._dlq_url,
                                         MessageBody=lease.body or "<empty>",
                                         MessageAttributes=attributes)
        except Exception as exc:
            log.error("dead_letter_failed", reason=reason, error=scrub_text(str(exc)))
            return  # leave the message: it comes back and is tried again
        self._metrics.dead_letters.labels(reason).inc()
        self.summary.dead_letters[reason] += 1
        log.warning("job_dead_lettered", reason=reason, error=text)
        await self._ack(lease)

    async def _ack(self, lease: Lease) -> None:
        await self._acks.put(lease)

    async def _release(self, lease: Lease, *, delay: int) -> None:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=lease.receipt, VisibilityTimeout=delay)
        except Exception as exc:
            log.warning("release_failed", error=scrub_text(str(exc)))

    async def _ack_loop(self) -> None:
        batches: set[asyncio.Task[None]] = set()
        try:
            while True:
                batch = [await self._acks.get()]
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(0.05):
                        while len(batch) < SQS_MAX_BATCH:
                            batch.append(await self._acks.get())
                await self._ack_room.acquire()
                task = asyncio.create_task(self._ack_batch(batch))
                batches.add(task)
                task.add_done_callback(batches.discard)
        finally:  # cancelled once every ack is done (run() joins the queue first)
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

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(1.0, self._settings.visibility_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            leases = [lease for lease in self._tasks.values()
                      if time.monotonic() - lease.received_at < SQS_MAX_VISIBILITY - 60]
            for i in range(0, len(leases), SQS_MAX_BATCH):
                await self._extend(leases[i:i + SQS_MAX_BATCH])

    async def _extend(self, leases: list[Lease]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": lease.receipt,
                    "VisibilityTimeout": self._settings.visibility_timeout}
                   for i, lease in enumerate(leases)]
        try:
            response = await self._sqs.change_message_visibility_batch(
                QueueUrl=self._queue_url, Entries=entries)
        except Exception as exc:
            log.warning("heartbeat_failed", error=scrub_text(str(exc)))
            return
        for failure in response.get("Failed", []):
            log.warning("heartbeat_entry_failed", code=failure.get("Code"))

    # -- shutdown -------------------------------------------------------------------------

    async def _drain(self) -> None:
        if not self._tasks:
            return
        deadline = None if self._idle_exit else self._settings.drain_seconds
        log.info("draining", in_flight=len(self._tasks), deadline_seconds=deadline)
        _, pending = await asyncio.wait(set(self._tasks), timeout=deadline)
        if not pending:
            return
        leases = [self._tasks[t] for t in pending if t in self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for lease in leases:
            await self._release(lease, delay=0)
        log.info("released_unfinished", count=len(leases))
