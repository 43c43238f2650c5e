"""One job, start to finish: look, decide, copy, verify. Returns what happened.

    HEAD source -> HEAD destination (already there? newer? -> skip) -> plan -> tags ->
    transfer -> verify -> JobResult

Two shortcuts for listed objects, both pinned to the listed ETag (a changed source takes the
long way): a small object is one GET (with the destination HEAD beside it, unless the listing
saw the destination missing) and one PUT; a same-store copy at a destination the listing saw
missing is one CopyObject.

Errors propagate as the tree in :mod:`common.errors`; the consumer decides what a failure
means for the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from common import checksums
from common.errors import (
    FerryError,
    GiveUp,
    RetryNow,
    SourceChanged,
    SourceUnavailable,
    SourceVanished,
    UploadBusy,
    UploadGone,
    VerificationFailed,
)
from common.fingerprint import SEQUENCER, holds_copy, newer_than
from common.jobs import CopyJob, DeleteJob
from common.logs import get_logger
from common.metrics import WorkerMetrics
from common.retry import RetryPolicy
from common.s3errors import head_or_none
from worker.metadata import direct_copy_args, write_args
from worker.multipart import clear_quiet
from worker.planner import Limits, Strategy, fits_layout, plan, shortcut
from worker.source import ByteSource, S3Source, SourceObject
from worker.transfer import Destination, Transfer, Written, most_significant
from worker.verify import verify_head, verify_response
from worker.wire import WireClients

log = get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class JobResult:
    result: str  # copied | skipped | deleted
    bytes: int = 0
    strategy: str = ""
    verified: str = ""
    reason: str = ""
    resumed: bool = False


def stale(sequencer: str | None, head: Mapping[str, Any] | None) -> bool:
    """True when the destination was written from a newer event than this job's."""
    if head is None or sequencer is None:
        return False
    applied = (head.get("Metadata") or {}).get(SEQUENCER)
    return applied is not None and not newer_than(sequencer, applied) and applied != sequencer


class Replicator:
    """Executes jobs with shared clients, limits and metrics (one per worker process)."""

    def __init__(self, *, clients: WireClients, transfer: Transfer, limits: Limits,
                 metrics: WorkerMetrics, retry: RetryPolicy) -> None:
        self._clients = clients
        self._transfer = transfer
        self._limits = limits
        self._metrics = metrics
        self._retry = retry
        self._same_keys: dict[tuple[str, str], bool] = {}

    def _one_store(self, src: str, dst: str) -> bool:
        """Server-side copy is possible between these endpoints: same service, same keys
        (settled once per pair: endpoints do not change while the worker runs)."""
        known = self._same_keys.get((src, dst))
        if known is None:
            src_ep, dst_ep = self._clients.endpoint(src), self._clients.endpoint(dst)
            known = src_ep.identity() == dst_ep.identity() and src_ep.server_side_copy
            self._same_keys[(src, dst)] = known
        return known

    async def _head_destination(self, client: Any, bucket: str, key: str) -> dict[str, Any] | None:
        return await self._transfer.call("HeadObject", "destination", partial(
            head_or_none, client, bucket=bucket, key=key))

    async def source_for(self, job: CopyJob) -> ByteSource:
        """The seam: today an S3 client; a presigned-URL source plugs in here."""
        client = await self._clients.get(job.source.endpoint)
        return S3Source(client, bucket=job.source.bucket, key=job.source.key,
                        version_id=job.source.version_id)

    async def copy(self, job: CopyJob, *, final_attempt: bool,
                   first_attempt: bool = False) -> JobResult:
        """Copy one object. A job that was tried before, when it ends (copied without a
        multipart upload of its own, skipped, vanished, or given up), also aborts the quiet
        multipart uploads on its key: what its killed attempts left."""
        if first_attempt:
            return await self._copy(job, final_attempt=final_attempt, first_attempt=True)
        try:
            result = await self._copy(job, final_attempt=final_attempt)
        except (GiveUp, SourceUnavailable):
            await self._clear_leftovers(job, final_attempt=True)
            raise
        except FerryError:
            if final_attempt:
                await self._clear_leftovers(job, final_attempt=True)
            raise
        if result.result != "copied" or not Strategy(result.strategy).multipart:
            await self._clear_leftovers(job, final_attempt=final_attempt)
        return result

    async def _clear_leftovers(self, job: CopyJob, *, final_attempt: bool) -> None:
        """Abort the quiet uploads open on the job's key. A failure to look is the job's
        failure (its next attempt clears them), but never turns a last attempt's outcome
        into another one."""
        ref = job.destination
        uploads = self._transfer.open_uploads(Destination(
            client=await self._clients.get(ref.endpoint),
            endpoint=self._clients.endpoint(ref.endpoint), bucket=ref.bucket, key=ref.key))
        try:
            await clear_quiet(uploads, quiet=self._transfer.upload_quiet)
        except FerryError as exc:
            if not final_attempt:
                raise
            log.warning("leftover_uploads_not_cleared", error=str(exc))

    async def _copy(self, job: CopyJob, *, final_attempt: bool,
                    first_attempt: bool = False) -> JobResult:
        started = time.monotonic()
        src_ep = self._clients.endpoint(job.source.endpoint)  # unknown names fail first
        dst_ep = self._clients.endpoint(job.destination.endpoint)
        source = await self.source_for(job)
        dest = Destination(client=await self._clients.get(job.destination.endpoint),
                           endpoint=dst_ep, bucket=job.destination.bucket,
                           key=job.destination.key)
        server_side = (self._one_store(job.source.endpoint, job.destination.endpoint)
                       and source.copy_source() is not None)
        with_tags = job.options.preserve_tags and src_ep.tagging and dst_ep.tagging
        cut = shortcut(job, server_side=server_side, first_attempt=first_attempt,
                       limits=self._limits)
        if cut is not None:
            with contextlib.suppress(SourceChanged):  # changed since listed: the long way
                if cut.strategy is Strategy.SERVER_COPY:
                    return await self._copy_direct(job, source, dest, with_tags, started)
                return await self._copy_small(job, source, dest, with_tags, started,
                                              head_destination=cut.head_destination)
        src = await self._transfer.call("HeadObject", "source", source.head)
        head = await self._head_destination(dest.client, dest.bucket, dest.key)
        same_store = src_ep.same_store(dst_ep)
        if skipped := self._skip(job, src, head, same_store=same_store):
            if not (job.options.verify_content and head is not None
                    and skipped.reason.startswith("already_copied")):
                return skipped
            if await self._same_bytes(source, src, dest, head):
                return JobResult(result="skipped", reason="verified_content")
            log.warning("destination_differs", looked_copied_by=skipped.reason)
        layout = src.part_size if src.composite_layout() and fits_layout(
            src.size, src.part_size, src.parts_count) else None
        the_plan = plan(size=src.size, server_side=server_side, limits=self._limits,
                        layout=layout)
        tags = await self._tags(source, src) if with_tags else None
        args = write_args(src, job, dst_ep, tags=tags)
        try:
            written = await self._transfer.execute(the_plan, source, src, dest, args,
                                                   final_attempt=final_attempt)
        except (UploadGone, UploadBusy) as lost:
            return await self._after_losing_the_upload(job, src, dest, lost,
                                                       same_store=same_store)
        return await self._finish(dest, src, written, the_plan.strategy.value, started)

    async def _after_losing_the_upload(self, job: CopyJob, src: SourceObject,
                                       dest: Destination, lost: UploadGone | UploadBusy, *,
                                       same_store: bool) -> JobResult:
        """Our upload was completed or aborted under us (by another attempt of this job that
        won a race, or by our own Complete whose answer was lost), or another attempt is
        driving the key. Whoever wrote the destination, it may already hold this copy; if
        not, the job is tried again, stepping back (not an attempt lost) while another
        upload of the key is live. A ``verify_content`` job trusts no metadata: tried again."""
        head = await self._head_destination(dest.client, dest.bucket, dest.key)
        skipped = self._skip(job, src, head, same_store=same_store)
        if skipped and not job.options.verify_content:
            log.info("upload_race_lost", reason=skipped.reason)
            return skipped
        quiet = self._transfer.upload_quiet
        if isinstance(lost, UploadGone) and any(
                u.idle_seconds < quiet for u in await self._transfer.open_uploads(dest).find()):
            raise UploadBusy("another attempt is writing this key", retry_after=quiet) from lost
        raise lost

    async def _copy_small(self, job: CopyJob, source: ByteSource, dest: Destination,
                          with_tags: bool, started: float, *,
                          head_destination: bool) -> JobResult:
        """GET the whole object (pinned to the listed ETag), HEADing the destination beside
        it when the plan says so."""
        assert job.source.etag is not None
        async with self._transfer.room(job.source.size or 0):
            try:
                async with asyncio.TaskGroup() as group:
                    fetched = group.create_task(self._transfer.call(
                        "GetObject", "source", partial(source.fetch, etag=job.source.etag)))
                    headed = group.create_task(self._head_destination(
                        dest.client, dest.bucket, dest.key)) if head_destination else None
            except BaseExceptionGroup as errors:
                raise most_significant(errors) from None
            (src, data) = fetched.result()
            head = headed.result() if headed is not None else None
            if skipped := self._skip(job, src, head):
                return skipped
            tags = await self._tags(source, src) if with_tags else None
            args = write_args(src, job, dest.endpoint, tags=tags)
            written = await self._transfer.put_bytes(src, data, dest, args)
        return await self._finish(dest, src, written, Strategy.STREAM_PUT.value, started)

    async def _copy_direct(self, job: CopyJob, source: ByteSource, dest: Destination,
                           with_tags: bool, started: float) -> JobResult:
        """One CopyObject within the store, pinned to the listed ETag, no HEADs.

        The proof is the store's own: the copy's ETag equals the source's (same content, same
        store); where it cannot (multipart or KMS sources get a new ETag), a HEAD checks size.
        """
        copy_source = source.copy_source()
        assert copy_source is not None and job.source.etag is not None
        args = direct_copy_args(job, dest.endpoint, with_tags=with_tags)
        answer = await self._transfer.copy_object(copy_source, job.source.etag, dest, args,
                                                  size=job.source.size or 0)
        etag = str((answer.get("CopyObjectResult") or {}).get("ETag", "")).strip('"')
        if etag != job.source.etag.strip('"'):
            head = await self._head_destination(dest.client, dest.bucket, dest.key)
            size = -1 if head is None else int(head.get("ContentLength", -1))
            if size != job.source.size:
                raise VerificationFailed(f"destination has {size} bytes after a server-side "
                                         f"copy, the source has {job.source.size}")
        strategy = Strategy.SERVER_COPY.value
        self._metrics.copy_duration.labels(strategy).observe(time.monotonic() - started)
        return JobResult(result="copied", bytes=job.source.size or 0, strategy=strategy,
                         verified="server_pinned")

    def _skip(self, job: CopyJob, src: SourceObject, head: Mapping[str, Any] | None, *,
              same_store: bool = False) -> JobResult | None:
        if job.source.etag and job.source.etag.strip('"') != src.etag.strip('"'):
            log.info("source_newer_than_job")
        if stale(job.options.sequencer, head):
            return JobResult(result="skipped", reason="stale_event")
        if why := holds_copy(head, size=src.size, etag=src.etag, checksum=src.checksum,
                             same_store=same_store):
            return JobResult(result="skipped", reason=f"already_copied:{why}")
        return None

    async def _same_bytes(self, source: ByteSource, src: SourceObject, dest: Destination,
                          head: Mapping[str, Any]) -> bool:
        """Read the destination back: do its bytes have the source's checksum? The source's
        own full-object checksum is taken when it has one; otherwise the source is read too."""
        theirs = S3Source(dest.client, bucket=dest.bucket, key=dest.key)
        read = partial(self._transfer.checksum_of, part_size=self._limits.part_size)
        expected: str | None
        if src.checksum is not None and src.checksum.comparable():
            algorithm, expected = src.checksum.algorithm, src.checksum.value
        else:
            algorithm = checksums.DEFAULT_ALGORITHM
            expected = await read(source, size=src.size, etag=src.etag, algorithm=algorithm,
                                  side="source")
            if expected is None:
                raise RetryNow("the source's bytes did not come back whole",
                               reason="corrupt_transfer")
        try:
            got = await read(theirs, size=int(head["ContentLength"]), etag=str(head["ETag"]),
                             algorithm=algorithm, side="destination")
        except (SourceVanished, SourceChanged):  # (read as a source) deleted or rewritten
            return False
        return got == expected

    async def _tags(self, source: ByteSource, src: SourceObject) -> dict[str, str] | None:
        if src.tag_count == 0:
            return None
        return await self._transfer.call("GetObjectTagging", "source", source.tags)

    async def _finish(self, dest: Destination, src: SourceObject, written: Written,
                      strategy: str, started: float) -> JobResult:
        method = await self._verify(dest, src, written)
        self._metrics.copy_duration.labels(strategy).observe(time.monotonic() - started)
        return JobResult(result="copied", bytes=src.size, strategy=strategy,
                         verified=method, resumed=written.resumed)

    async def _verify(self, dest: Destination, src: SourceObject, written: Written) -> str:
        method = verify_response(written)
        if method is not None:
            return method
        head = await self._head_destination(dest.client, dest.bucket, dest.key)
        if head is None:
            raise VerificationFailed("destination missing right after the copy")
        return verify_head(head, src, written)

    async def delete(self, job: DeleteJob) -> JobResult:
        client = await self._clients.get(job.destination.endpoint)
        ref = job.destination
        head = await self._head_destination(client, ref.bucket, ref.key)
        if head is None:
            return JobResult(result="skipped", reason="already_absent")
        if stale(job.sequencer, head):
            return JobResult(result="skipped", reason="stale_event")
        await self._transfer.call("DeleteObject", "destination", partial(
            client.delete_object, Bucket=ref.bucket, Key=ref.key))
        return JobResult(result="deleted")
