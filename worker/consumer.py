"""The SQS side of the worker: leases in, outcomes out.

* Capacity first: a worker receives only while it holds fewer than ``max_jobs`` jobs, and asks
  for as many messages as should fill that room, judged by how many jobs recent messages
  carried, or their sender's bundle limit when larger (a bundle carries many). So a busy
  worker leaves messages visible to other workers. ``max_jobs`` jobs run at once. Several
  receive loops share the room (``receivers``), so receiving is not one round trip per 10
  messages.
* A message is a lease: a short visibility timeout, renewed every quarter of it by one
  heartbeat loop for every message in flight (ChangeMessageVisibilityBatch), never past SQS's
  12 h cap. A lease left unrenewed for half its length is given up: its jobs are cancelled
  and the message is left alone, for SQS to hand to another worker once the lease ends. So a
  job is never worked on by two holders of one message, and what a given-up job leaves on
  the store looks quiet to the next holder (:mod:`worker.multipart`).
* Acks are batched (DeleteMessageBatch), a few batches in flight at once, and each batch's
  ``Failed`` list is checked.
* Outcomes: done -> delete; bad message / permanent error / archived source -> dead-letter queue
  with a ``reason`` attribute, then delete; transient -> release with a backoff (at least the
  error's ``retry_after``), and to the dead-letter queue once ``max_attempts`` receives are
  spent; vanished source -> recorded, delete.
* A bundle's jobs each get their own outcome: a job for the dead-letter queue goes there alone
  (as a single job); jobs to try again go back onto the queue in a new, delayed bundle that
  carries their attempts; then the bundle is deleted. If that send fails, the whole bundle is
  released instead (its finished jobs are skipped next time: the destination has them).
* Shutdown, in order: stop receiving -> drain until the deadline -> release what is unfinished
  (visibility 0) -> flush acks -> return. A message's outcome (ack, dead letters, requeue,
  release) is written whole under ``asyncio.shield``: a drain or a lost lease that cancels its
  job then neither cuts it short nor releases the message beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from common.errors import (
    BadMessage,
    FerryError,
    GiveUp,
    Redeliver,
    RetryNow,
    SourceArchived,
    SourceVanished,
    UploadBusy,
)
from common.health import Health
from common.jobs import Bundle, CopyJob, DeleteJob, decode, decode_item, encode_bundle, item_body
from common.limits import SQS_MAX_BATCH, SQS_MAX_DELAY, SQS_MAX_VISIBILITY
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.replicate import JobResult, Replicator

log = get_logger(__name__)
MAX_ERROR_TEXT = 1000
MAX_AUTO_RECEIVERS = 4
ACKS_IN_FLIGHT = 4  # DeleteMessageBatch calls at once
# An ack waits this long for others to share its DeleteMessageBatch, and only while jobs are
# still running (when none is, no other ack is coming soon: the last job of a backfill, or a
# lone event, is acknowledged at once). Waiting costs nothing but the wait: the job's slot is
# free as soon as it finished, and its message stays hidden for the visibility timeout
# (at least 10 s). Fewer calls are fewer SQS requests to pay for, and less work for a queue
# that shares the machine: 16 copies finishing over 0.4 s took 5-7 calls at 0.05 s, 2 at 0.5 s.
ACK_LINGER_SECONDS = 0.5
RECENT_MESSAGES = 20  # how many messages' job counts predict the next ones'


def error_text(error: str) -> str:
    """An error as it may be logged or put in a dead letter: scrubbed, then bounded."""
    return scrub_text(error)[:MAX_ERROR_TEXT]


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


@dataclass(frozen=True)
class Outcome:
    """What one job's attempt means for its message."""

    action: Literal["ack", "dead", "retry"]
    route: str = "-"
    reason: str = ""
    error: str = ""
    retry_after: float = 0.0  # "retry": not before this many seconds


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
                 settings: WorkerSettings, metrics: WorkerMetrics,
                 health: Health | None = None) -> None:
        self._sqs = sqs
        self._health = health or Health()
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self._replicator = replicator
        self._settings = settings
        self._metrics = metrics
        self._running = asyncio.Semaphore(settings.max_jobs)  # jobs at once
        self._executing = 0  # jobs being copied or deleted right now
        self._load = 0.0  # jobs held: received (estimated until read) and not yet done
        self._room_freed = asyncio.Event()
        self._recent: deque[int] = deque(maxlen=RECENT_MESSAGES)  # jobs per message
        self._stopping = asyncio.Event()
        self._idle_exit = False
        self._tasks: dict[asyncio.Task[None], Lease] = {}
        self._settlements: set[asyncio.Task[None]] = set()  # outcomes being written
        self._acks: asyncio.Queue[Lease] = asyncio.Queue()
        self._ack_room = asyncio.Semaphore(ACKS_IN_FLIGHT)
        self.receivers = settings.receivers or min(
            MAX_AUTO_RECEIVERS, -(-settings.max_jobs // SQS_MAX_BATCH))
        self.summary = Summary()

    def stop(self) -> None:
        """Begin a clean shutdown (called from the SIGTERM handler)."""
        if not self._stopping.is_set():
            log.info("shutdown_requested", in_flight=len(self._tasks))
            self._health.not_ready("draining")
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

    def _give_back(self, jobs: float) -> None:
        self._load = max(0.0, self._load - jobs)
        self._load_changed()

    def _load_changed(self) -> None:
        """Wake the receive loops waiting for room, only when there is some: a full worker
        finishing a job (the usual case under load) wakes nobody."""
        if self._load < self._settings.max_jobs:
            self._room_freed.set()
        self._metrics.jobs_held.set(round(self._load))

    def _weigh(self, lease: Lease, jobs: int, limit: int | None = None) -> None:
        """The message was read: count its real number of jobs instead of the estimate.
        The next messages are expected as large as the sender's bundle ``limit``: its
        bundles grow up to it."""
        self._recent.append(max(jobs, limit or 0))
        self._load += jobs - lease.weight
        lease.weight = jobs
        self._load_changed()

    def _job_done(self, lease: Lease) -> None:
        lease.weight -= 1
        self._give_back(1)

    async def _receive_loop(self) -> None:
        idle = 0
        failures = 0
        while not self._stopping.is_set():
            room = await self._until_stopped(self._take_room())
            if room is None:
                break
            n, each = room
            try:
                messages = await self._until_stopped(self._receive(n))
                failures = 0
            except Exception as exc:
                self._give_back(n * each)
                failures += 1
                self._health.not_ready(f"ReceiveMessage failed {failures} time(s)")
                log.warning("receive_failed", error=scrub_text(str(exc)), failures=failures)
                await self._until_stopped(asyncio.sleep(min(30.0, 0.5 * 2 ** failures)))
                continue
            if messages is None:
                self._give_back(n * each)
                break
            self._give_back((n - len(messages)) * each)
            if messages:
                idle = 0
                for message in messages:
                    self._start(message, each)
                await asyncio.sleep(0)  # let them read their messages: the next estimate
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
            if isinstance(result, tuple):  # room reserved while stopping: give it back
                self._give_back(result[0] * result[1])
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
        self._health.ready()
        self._metrics.messages_received.inc(len(messages))
        return messages

    @staticmethod
    def _lease(message: dict[str, Any], weight: float = 1.0) -> Lease:
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return Lease(message["MessageId"], message["ReceiptHandle"], message.get("Body", ""),
                     count, weight)

    def _start(self, message: dict[str, Any], weight: float) -> None:
        lease = self._lease(message, weight)
        task = asyncio.create_task(self._handle(lease))
        self._tasks[task] = lease
        task.add_done_callback(self._finished)
        # SQS starts the lease when it answers, not when the (long) poll was sent
        self._leased_until(lease, task, lease.received_at + self._settings.visibility_timeout)

    def _finished(self, task: asyncio.Task[None]) -> None:
        lease = self._tasks.pop(task, None)
        if lease is not None:
            if lease.watchdog is not None:
                lease.watchdog.cancel()
            self._give_back(lease.weight)

    # -- one message ----------------------------------------------------------------------

    async def _handle(self, lease: Lease) -> None:
        structlog.contextvars.bind_contextvars(message_id=lease.message_id,
                                               receive_count=lease.receive_count)
        try:
            message = decode(lease.body)
        except BadMessage as exc:
            await self._settling(lease, self._dead_letter(lease, exc.reason, str(exc),
                                                          route="-"))
            return
        if isinstance(message, Bundle):
            await self._process_bundle(lease, message)
            return
        self._weigh(lease, 1)
        outcome = await self._execute(message, attempt=lease.receive_count)
        await self._settling(lease, self._settle(lease, outcome))

    async def _settling(self, lease: Lease, settle: Coroutine[Any, Any, None]) -> None:
        """Write a message's outcome (ack, dead letter, requeue, release) whole: cancelling the
        job now (a drain deadline, a lost lease) neither cuts it short nor releases the
        message beside it; a drain waits for it."""
        lease.settling = True
        task = asyncio.create_task(settle)
        self._settlements.add(task)
        task.add_done_callback(self._settlements.discard)
        await asyncio.shield(task)

    async def _execute(self, job: CopyJob | DeleteJob, *, attempt: int) -> Outcome:
        """Run one job (``attempt`` counts from 1) and say what it means for its message."""
        structlog.contextvars.bind_contextvars(job_id=job.id, route=job.route, kind=job.kind)
        final = attempt >= self._settings.max_attempts
        async with self._running:
            self._metrics.jobs_in_flight.inc()
            self._executing += 1
            try:
                return await self._attempt(job, attempt=attempt, final=final)
            finally:
                self._executing -= 1
                self._metrics.jobs_in_flight.dec()

    async def _attempt(self, job: CopyJob | DeleteJob, *, attempt: int, final: bool) -> Outcome:
        route = job.route
        try:
            if isinstance(job, CopyJob):
                result = await self._replicator.copy(job, final_attempt=final,
                                                     first_attempt=attempt == 1)
            else:
                result = await self._replicator.delete(job)
        except SourceVanished as exc:
            self._record(route, "vanished")
            log.info("source_vanished", reason=exc.reason)
            return Outcome("ack", route)
        except (SourceArchived, GiveUp) as exc:
            self._record(route, "archived" if isinstance(exc, SourceArchived) else "failed")
            return Outcome("dead", route, exc.reason, str(exc))
        except (Redeliver, RetryNow) as exc:
            return self._failed_attempt(route, exc, final)
        except Exception as exc:  # a bug of ours: never crash the worker on one job
            log.exception("job_crashed")
            return self._failed_attempt(route, FerryError(
                f"{type(exc).__name__}: {exc}", reason="internal_error"), final)
        self._succeeded(route, result)
        return Outcome("ack", route)

    def _failed_attempt(self, route: str, exc: FerryError, final: bool) -> Outcome:
        """Retry, or dead-letter a job out of attempts. A job stepping back for another attempt
        that drives its upload (UploadBusy) is not out of attempts: its outcome is the other
        attempt's, and its next receive finds the copy made (a last attempt never waits for
        a live upload, so this ends)."""
        if final and not isinstance(exc, UploadBusy):
            self._record(route, "failed")
            return Outcome("dead", route, "retries_exhausted", f"{exc.reason}: {exc}")
        self._record(route, "retried")
        return Outcome("retry", route, exc.reason, str(exc), exc.retry_after)

    async def _settle(self, lease: Lease, outcome: Outcome) -> None:
        """A single job's message: delete it, dead-letter it, or let it come back later."""
        if outcome.action == "ack":
            await self._ack(lease)
        elif outcome.action == "dead":
            await self._dead_letter(lease, outcome.reason, outcome.error, route=outcome.route)
        else:
            delay = self._backoff(lease.receive_count, outcome.retry_after)
            log.info("job_released", reason=outcome.reason,
                     error=error_text(outcome.error), retry_in=delay)
            await self._release(lease, delay=delay)

    def _backoff(self, attempt: int, at_least: float = 0.0) -> int:
        """Seconds before a job tried ``attempt`` times is tried again: jittered, growing,
        at most a lease, but never less than ``at_least`` (what the failure asked for)."""
        jittered = min(self._settings.visibility_timeout,
                       int(random.uniform(1, 2 ** min(attempt, 8))))
        return min(SQS_MAX_VISIBILITY, max(jittered, math.ceil(at_least)))

    # -- a bundle -------------------------------------------------------------------------

    async def _process_bundle(self, lease: Lease, bundle: Bundle) -> None:
        self._weigh(lease, len(bundle.jobs), bundle.limit)
        attempt = bundle.attempts + lease.receive_count
        structlog.contextvars.bind_contextvars(bundle_id=bundle.id)
        outcomes = await asyncio.gather(*(self._bundled(lease, item, attempt)
                                          for item in bundle.jobs))
        dead = [(item, o) for item, o in zip(bundle.jobs, outcomes, strict=True)
                if o.action == "dead"]
        again = [item for item, o in zip(bundle.jobs, outcomes, strict=True)
                 if o.action == "retry"]
        at_least = max((o.retry_after for o in outcomes if o.action == "retry"), default=0.0)
        await self._settling(lease, self._settle_bundle(lease, bundle, attempt, dead, again,
                                                        self._backoff(attempt, at_least)))

    async def _settle_bundle(self, lease: Lease, bundle: Bundle, attempt: int,
                             dead: list[tuple[Any, Outcome]], again: list[Any],
                             delay: int) -> None:
        """Each failed job to the dead-letter queue, the ones to try again in a new delayed
        bundle, then the bundle deleted; released whole if the new bundle cannot be sent."""
        again = again + await self._dead_letter_jobs(lease, bundle, attempt, dead)
        if again and not await self._requeue(bundle, again, attempt,
                                             min(delay, SQS_MAX_DELAY)):
            await self._release(lease, delay=delay)
            return
        await self._ack(lease)

    async def _bundled(self, lease: Lease, item: Any, attempt: int) -> Outcome:
        try:
            try:
                job = decode_item(item)
            except BadMessage as exc:
                return Outcome("dead", "-", exc.reason, str(exc))
            outcome = await self._execute(job, attempt=attempt)
            if outcome.action == "retry":
                log.info("job_to_retry", reason=outcome.reason,
                         error=error_text(outcome.error))
            return outcome
        finally:
            self._job_done(lease)

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

    # -- SQS writes -----------------------------------------------------------------------

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
        self.summary.dead_letters[reason] += 1
        log.warning("job_dead_lettered", reason=reason, error=text, **context)

    async def _dead_letter(self, lease: Lease, reason: str, error: str, *, route: str) -> None:
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
        await self._ack(lease)

    async def _dead_letter_jobs(self, lease: Lease, bundle: Bundle, attempt: int,
                                dead: list[tuple[Any, Outcome]]) -> list[Any]:
        """Each of a bundle's failed jobs to the DLQ as a message of its own (with its reason).
        Returns the jobs that could not be sent there: they go back onto the queue."""
        kept: list[Any] = []
        for start in range(0, len(dead), SQS_MAX_BATCH):
            chunk = dead[start:start + SQS_MAX_BATCH]
            texts = [error_text(o.error) for _, o in chunk]
            entries = [{"Id": str(n), "MessageBody": item_body(item),
                        "MessageAttributes": self._dead_attributes(
                            lease, o.reason, text, o.route, attempt, bundle.id)}
                       for n, ((item, o), text) in enumerate(zip(chunk, texts, strict=True))]
            try:
                answer = await self._sqs.send_message_batch(QueueUrl=self._dlq_url,
                                                            Entries=entries)
            except Exception as exc:
                log.error("dead_letter_failed", jobs=len(chunk), error=scrub_text(str(exc)))
                kept.extend(item for item, _ in chunk)
                continue
            failed = {int(f["Id"]) for f in answer.get("Failed", ())}
            for n, ((item, o), text) in enumerate(zip(chunk, texts, strict=True)):
                if n in failed:
                    kept.append(item)
                else:
                    job_id = item.get("id") if isinstance(item, dict) else None
                    self._dead_lettered(o.reason, text, job_id=job_id, route=o.route)
            if failed:
                log.error("dead_letter_failed", jobs=len(failed))
        return kept

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
                    async with asyncio.timeout(ACK_LINGER_SECONDS):
                        while len(batch) < SQS_MAX_BATCH and (self._executing
                                                               or not self._acks.empty()):
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
        interval = max(1.0, self._settings.visibility_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            leases = [(task, lease) for task, lease in self._tasks.items()
                      if time.monotonic() - lease.received_at < SQS_MAX_VISIBILITY - 60]
            await asyncio.gather(*(self._extend(leases[i:i + SQS_MAX_BATCH])
                                   for i in range(0, len(leases), SQS_MAX_BATCH)))

    async def _extend(self, leases: list[tuple[asyncio.Task[None], Lease]]) -> None:
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
        lease is left unrenewed, so whoever SQS hands it to next finds our work stopped and
        its uploads quiet (worker.multipart)."""
        if lease.watchdog is not None:
            lease.watchdog.cancel()
        give_up_at = expires - self._settings.upload_quiet_seconds
        loop = asyncio.get_running_loop()
        lease.watchdog = loop.call_at(loop.time() + give_up_at - time.monotonic(),
                                      self._lease_lost, lease, task)

    def _lease_lost(self, lease: Lease, task: asyncio.Task[None]) -> None:
        if task.done() or self._tasks.get(task) is not lease or lease.settling:
            return
        self._metrics.leases_lost.inc()
        log.warning("lease_lost", message_id=lease.message_id,
                    held_seconds=round(time.monotonic() - lease.received_at, 1))
        task.cancel()  # nothing is settled: the message is no longer ours to settle

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
        unfinished = [lease for lease in leases if not lease.settling]
        for lease in unfinished:
            await self._release(lease, delay=0)
        await asyncio.gather(*self._settlements, return_exceptions=True)
        log.info("released_unfinished", count=len(unfinished))
