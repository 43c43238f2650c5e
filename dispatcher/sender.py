"""Jobs onto SQS in batches: SendMessageBatch, each answer's ``Failed`` list retried.

Small jobs (deletes, and copies of objects up to ``bundle_object_bytes``) are first packed
into bundles, many jobs per message (see :mod:`common.jobs`): for a bucket of small objects,
SQS calls, their cost and the worker's per-message work drop by up to ``jobs_per_message``.
Larger objects keep a message each, so a fleet spreads them over its workers. Bundles start
at one job and double (1, 2, 4, ...) up to ``jobs_per_message``: a small backfill, or the jobs
of a few events, still spread over several workers, and a large one is soon in full bundles.
Each bundle names that limit, so workers leave room for full bundles from the first one.

Batches hold at most 10 messages and 256 KiB. A sender fed over time (``streaming``: a
backfill's listing) grows them the same way, 1, 2, 4, 8 and then 10 messages, so the first
job is on the queue as soon as it is decided rather than after ten bundles (~430 jobs) are;
a sender given all its jobs at once (the events of one receive) fills every batch. A few
batches are in flight at once (bounded); entries SQS reports as failed are sent again with
jittered backoff, and a batch that still fails after the retry budget raises
:class:`SendFailed`: the backfill stops with an error and can simply be run again (the
worker skips what was already copied). ``sent`` counts only entries SQS accepted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.errors import FerryError, RetryNow
from common.jobs import MAX_BUNDLE_BYTES, CopyJob, DeleteJob, encode, encode_bundle
from common.limits import SQS_MAX_BATCH, SQS_MAX_MESSAGE_BYTES
from common.logs import get_logger
from common.metrics import DispatcherMetrics
from common.retry import RetryPolicy, retrying
from common.s3errors import translated
from common.settings import DispatcherSettings

log = get_logger(__name__)


class SendFailed(FerryError):
    reason = "send_failed"


Jobs = list[CopyJob | DeleteJob]


@dataclass
class _Batch:
    bodies: list[tuple[str, Jobs]] = field(default_factory=list)  # a message and its jobs
    size: int = 0


@dataclass
class _Bundle:
    bodies: list[str] = field(default_factory=list)
    jobs: Jobs = field(default_factory=list)
    size: int = 0


def bundled(job: CopyJob | DeleteJob, settings: DispatcherSettings) -> bool:
    """Whether a job may share its message: a delete, or a copy of a small object."""
    if settings.jobs_per_message < 2:
        return False
    if isinstance(job, DeleteJob):
        return True
    return job.source.size is not None and job.source.size <= settings.bundle_object_bytes


@dataclass
class Sent:
    """What reached the queue (counts by kind, copy bytes) and a sample for people."""

    jobs: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    sample_size: int = 10

    def record(self, job: CopyJob | DeleteJob) -> None:
        self.jobs[job.kind] += 1
        if isinstance(job, CopyJob):
            self.bytes += job.source.size or 0
        if len(self.sample) < self.sample_size:
            self.sample.append(describe(job))


def describe(job: CopyJob | DeleteJob) -> dict[str, Any]:
    d = job.destination
    out: dict[str, Any] = {"kind": job.kind, "route": job.route,
                           "destination": f"{d.endpoint}:{d.bucket}/{d.key}"}
    if isinstance(job, CopyJob):
        s = job.source
        out |= {"source": f"{s.endpoint}:{s.bucket}/{s.key}", "size": s.size}
    return out


class DryRun:
    """A sink that only counts: what ``--dry-run`` reports, nothing sent."""

    def __init__(self, sample_size: int = 10) -> None:
        self.sent = Sent(sample_size=sample_size)

    async def put(self, job: CopyJob | DeleteJob) -> None:
        self.sent.record(job)

    async def flush(self) -> None:
        return None


class JobSender:
    """Batches jobs to one queue; ``flush`` waits for everything and re-raises failures."""

    def __init__(self, sqs: Any, queue_url: str, *, metrics: DispatcherMetrics,
                 in_flight: int = 4, policy: RetryPolicy | None = None,
                 sample_size: int = 10,
                 bundling: DispatcherSettings | None = None,
                 streaming: bool = False) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._metrics = metrics
        self._policy = policy or RetryPolicy(attempts=8, max_seconds=60)
        self._slots = asyncio.Semaphore(in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch = _Batch()
        self._bundling = bundling or DispatcherSettings()
        self._bundle = _Bundle()
        self._bundles_sealed = 0
        self._batch_limit = 1 if streaming else SQS_MAX_BATCH  # messages in the next batch
        self._error: BaseException | None = None
        self.sent = Sent(sample_size=sample_size)

    async def put(self, job: CopyJob | DeleteJob) -> None:
        self._raise_failure()
        body = encode(job)
        if not bundled(job, self._bundling):
            await self._add(body, [job])
            return
        size = len(body.encode("utf-8")) + 2  # and the ", " between entries
        if self._bundle.bodies and self._bundle.size + size > MAX_BUNDLE_BYTES - 128:
            await self._seal()
        self._bundle.bodies.append(body)
        self._bundle.jobs.append(job)
        self._bundle.size += size
        if len(self._bundle.bodies) >= self._bundle_limit():
            await self._seal()

    def _bundle_limit(self) -> int:
        return min(self._bundling.jobs_per_message, 1 << min(self._bundles_sealed, 16))

    async def _seal(self) -> None:
        bundle, self._bundle = self._bundle, _Bundle()
        if bundle.bodies:  # even one job: the bundle tells workers how large bundles get
            self._bundles_sealed += 1
            await self._add(encode_bundle(bundle.bodies,
                                          limit=self._bundling.jobs_per_message), bundle.jobs)

    async def _add(self, body: str, jobs: Jobs) -> None:
        size = len(body.encode("utf-8"))
        if self._batch.bodies and self._batch.size + size > SQS_MAX_MESSAGE_BYTES:
            await self._launch()
        self._batch.bodies.append((body, jobs))
        self._batch.size += size
        if len(self._batch.bodies) >= self._batch_limit:
            await self._launch()

    async def flush(self) -> None:
        await self._seal()
        if self._batch.bodies:
            await self._launch()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise SendFailed(f"could not send jobs: {self._error}") from self._error

    async def _launch(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._batch_limit = min(SQS_MAX_BATCH, self._batch_limit * 2)
        await self._slots.acquire()
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def _send(self, batch: _Batch) -> None:
        pending = dict(enumerate(batch.bodies))

        async def attempt() -> None:
            entries = [{"Id": str(i), "MessageBody": body} for i, (body, _) in pending.items()]
            with translated("SendMessageBatch"):
                answer = await self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
            for ok in answer.get("Successful", ()):
                _, jobs = pending.pop(int(ok["Id"]))
                self._metrics.messages_sent.inc()
                for job in jobs:
                    self._accepted(job)
            self._check_failed(answer.get("Failed", ()), pending)

        await retrying(attempt, self._policy)

    def _accepted(self, job: CopyJob | DeleteJob) -> None:
        self.sent.record(job)
        self._metrics.jobs_enqueued.labels(job.route, job.kind).inc()
        if isinstance(job, CopyJob):
            self._metrics.bytes_enqueued.labels(job.route).inc(job.source.size or 0)

    def _check_failed(self, failed: Any, pending: dict[int, Any]) -> None:
        if not failed:
            return
        codes = [str(f.get("Code", "unknown")) for f in failed]
        for code in codes:
            self._metrics.send_failures.labels(code).inc()
        if any(f.get("SenderFault") for f in failed):
            raise SendFailed(f"SQS refused {len(failed)} message(s): {sorted(set(codes))}")
        log.info("send_batch_partly_failed", failed=len(failed), remaining=len(pending),
                 codes=sorted(set(codes)))
        raise RetryNow(f"{len(failed)} entries failed: {sorted(set(codes))}")
