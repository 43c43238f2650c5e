"""The worker's SQS side: messages in, jobs run, outcomes out.

A :class:`Consumer` puts four parts together:

* :mod:`worker.receiving`: capacity first, then ReceiveMessage, in a few loops;
* :mod:`worker.leases`: each message held is a lease, renewed, given up when it cannot be;
* running a message (here): decode it, run its job or its bundle's jobs (``max_jobs`` at
  once), each job's attempt becoming a :class:`~worker.settling.Verdict`: done, dead letter
  (bad message, permanent error, archived source, out of attempts), or retry;
* :mod:`worker.settling`: the verdicts written to SQS, whole.

Shutdown, in order: stop receiving -> drain until the deadline -> release what is unfinished
(visibility 0; not a message whose outcome is being written) -> wait for the outcomes and
acks -> return.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
from common.jobs import Bundle, CopyJob, DeleteJob, decode, decode_item
from common.logs import get_logger
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.leases import Lease, Leases
from worker.receiving import Message, Receiver
from worker.replicate import JobResult, Replicator
from worker.settling import Settler, Verdict, error_text
from worker.summary import Summary

log = get_logger(__name__)


class Consumer:
    def __init__(self, *, sqs: Any, queue_url: str, dlq_url: str, replicator: Replicator,
                 settings: WorkerSettings, metrics: WorkerMetrics,
                 health: Health | None = None) -> None:
        self._replicator = replicator
        self._settings = settings
        self._metrics = metrics
        self._health = health or Health()
        self._running = asyncio.Semaphore(settings.max_jobs)  # jobs at once
        self._executing = 0  # jobs being copied or deleted right now
        self.summary = Summary()
        self._leases = Leases(sqs=sqs, queue_url=queue_url, settings=settings, metrics=metrics)
        self._settler = Settler(sqs=sqs, queue_url=queue_url, dlq_url=dlq_url,
                                settings=settings, metrics=metrics, summary=self.summary,
                                busy=lambda: self._executing > 0)
        self._receiver = Receiver(sqs=sqs, queue_url=queue_url, settings=settings,
                                  metrics=metrics, health=self._health, start=self._start,
                                  held=lambda: len(self._leases.held), let_go=self._let_go)
        self.receivers = self._receiver.loops

    def stop(self) -> None:
        """Begin a clean shutdown (called from the SIGTERM handler)."""
        if not self._receiver.stopping.is_set():
            log.info("shutdown_requested", in_flight=len(self._leases.held))
            self._health.not_ready("draining")
            self._receiver.stopping.set()

    async def run(self) -> Summary:
        renewing = asyncio.create_task(self._leases.keep_renewing())
        acking = asyncio.create_task(self._settler.keep_acking())
        try:
            await self._receiver.run()
            await self._drain()
        finally:
            renewing.cancel()
            await self._settler.written()
            acking.cancel()
            await asyncio.gather(renewing, acking, return_exceptions=True)
        return self.summary

    def _start(self, message: Message, weight: float) -> None:
        lease = Lease.of(message, weight)
        task = asyncio.create_task(self._handle(lease))
        task.add_done_callback(self._finished)
        self._leases.hold(lease, task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        lease = self._leases.let_go(task)
        if lease is not None:
            self._receiver.give_back(lease.weight)

    async def _let_go(self, messages: list[Message]) -> None:
        """Received just as a stop came: visible again at once, for other workers."""
        for message in messages:
            await self._settler.release(Lease.of(message), delay=0)

    # -- one message ------------------------------------------------------------------------

    async def _handle(self, lease: Lease) -> None:
        structlog.contextvars.bind_contextvars(message_id=lease.message_id,
                                               receive_count=lease.receive_count)
        try:
            message = decode(lease.body)
        except BadMessage as exc:
            await self._settler.whole(lease, self._settler.dead_letter(
                lease, exc.reason, str(exc), route="-"))
            return
        if isinstance(message, Bundle):
            await self._run_bundle(lease, message)
            return
        self._receiver.weigh(lease, 1)
        verdict = await self._execute(message, attempt=lease.receive_count)
        await self._settler.whole(lease, self._settler.single(lease, verdict))

    async def _run_bundle(self, lease: Lease, bundle: Bundle) -> None:
        """Every job of the bundle at once (within ``max_jobs``), each with its own verdict;
        its attempts are the bundle's plus this receive."""
        self._receiver.weigh(lease, len(bundle.jobs), bundle.limit)
        attempt = bundle.attempts + lease.receive_count
        structlog.contextvars.bind_contextvars(bundle_id=bundle.id)
        verdicts = await asyncio.gather(*(self._bundled(lease, item, attempt)
                                          for item in bundle.jobs))
        await self._settler.whole(lease, self._settler.bundle(lease, bundle, attempt,
                                                              verdicts))

    async def _bundled(self, lease: Lease, item: Any, attempt: int) -> Verdict:
        try:
            try:
                job = decode_item(item)
            except BadMessage as exc:
                return Verdict("dead", "-", exc.reason, str(exc))
            verdict = await self._execute(job, attempt=attempt)
            if verdict.action == "retry":
                log.info("job_to_retry", reason=verdict.reason,
                         error=error_text(verdict.error))
            return verdict
        finally:
            self._receiver.job_done(lease)

    # -- one job ----------------------------------------------------------------------------

    async def _execute(self, job: CopyJob | DeleteJob, *, attempt: int) -> Verdict:
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

    async def _attempt(self, job: CopyJob | DeleteJob, *, attempt: int, final: bool) -> Verdict:
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
            return Verdict("ack", route)
        except (SourceArchived, GiveUp) as exc:
            self._record(route, "archived" if isinstance(exc, SourceArchived) else "failed")
            return Verdict("dead", route, exc.reason, str(exc))
        except (Redeliver, RetryNow) as exc:
            return self._failed_attempt(route, exc, final)
        except Exception as exc:  # a bug of ours: never crash the worker on one job
            log.exception("job_crashed")
            return self._failed_attempt(route, FerryError(
                f"{type(exc).__name__}: {exc}", reason="internal_error"), final)
        self._succeeded(route, result)
        return Verdict("ack", route)

    def _failed_attempt(self, route: str, exc: FerryError, final: bool) -> Verdict:
        """Retry, or dead-letter a job out of attempts. A job stepping back for another attempt
        that drives its upload (UploadBusy) is not out of attempts: its outcome is the other
        attempt's, and its next receive finds the copy made (a last attempt never waits for
        a live upload, so this ends)."""
        if final and not isinstance(exc, UploadBusy):
            self._record(route, "failed")
            return Verdict("dead", route, "retries_exhausted", f"{exc.reason}: {exc}")
        self._record(route, "retried")
        return Verdict("retry", route, exc.reason, str(exc), exc.retry_after)

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

    # -- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        held = self._leases.held
        if not held:
            return
        deadline = None if self._receiver.idle_exit else self._settings.drain_seconds
        log.info("draining", in_flight=len(held), deadline_seconds=deadline)
        _, pending = await asyncio.wait(set(held), timeout=deadline)
        if not pending:
            return
        leases = [held[t] for t in pending if t in held]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        unfinished = [lease for lease in leases if not lease.settling]
        for lease in unfinished:
            await self._settler.release(lease, delay=0)
        log.info("released_unfinished", count=len(unfinished))
