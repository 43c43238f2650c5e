"""Executes a Plan: moves the bytes and returns what the destination must now hold.

Four strategies (chosen by :mod:`worker.planner`):

* ``stream_put``        one pinned GET, one PUT with the checksum we computed;
* ``stream_multipart``  pinned ranged GETs -> UploadPart, parts in parallel under a shared
                        slot limit (memory <= part size x slots), per-part CRCs combined into
                        one full-object checksum, resumable;
* ``server_copy``       CopyObject with CopySourceIfMatch (same endpoint, <= 5 GiB);
* ``server_multipart``  UploadPartCopy in parallel with CopySourceIfMatch.

Server-side copies also take room in the optional copy budget (``server_copy_budget``): the
bytes the store is copying for this worker at once.

Every read is pinned to the ETag seen by HEAD, so a source overwritten mid-copy fails with
SourceChanged and never yields a mixed object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from common import checksums
from common.errors import (
    AnswerLost,
    FerryError,
    GiveUp,
    Redeliver,
    RetryNow,
    SourceChanged,
    SourceUnavailable,
)
from common.metrics import WorkerMetrics
from common.retry import RetryPolicy, retrying
from common.s3errors import classify, error_code
from common.settings import Endpoint
from worker.budget import ByteBudget
from worker.multipart import MultipartUpload, OpenUploads, UploadedPart
from worker.planner import Part, Plan, Strategy, split
from worker.source import BufferBody, ByteSource, SourceObject

T = TypeVar("T")
CLOCK_SKEW = timedelta(minutes=2)


@dataclass(frozen=True, kw_only=True)
class Destination:
    client: Any
    endpoint: Endpoint
    bucket: str
    key: str

    @property
    def checksums(self) -> bool:
        """Whether this store takes and reports flexible checksums."""
        return self.endpoint.checksums == "when_supported"


@dataclass(frozen=True, kw_only=True)
class Written:
    """What the write answered: the checksum the destination now reports (if any)."""

    algorithm: str | None
    expected: str | None
    reported: str | None
    source_checked: bool
    response: dict[str, Any]
    fallback: str = "upload_checksum"
    resumed: bool = False


def checksum_algorithm(src: SourceObject) -> str:
    """Keep the source's algorithm when we can recompute it, so both sides stay comparable."""
    if src.checksum is not None and (src.checksum.comparable() or src.composite_layout()):
        return src.checksum.algorithm
    return checksums.DEFAULT_ALGORITHM


def check_source(src: SourceObject, algorithm: str,
                 parts: Sequence[checksums.PartChecksum]) -> bool:
    """Compare what we read (per-part CRCs, in order) with the source's own checksum.

    A FULL_OBJECT checksum is compared with the parts combined; a COMPOSITE one is
    recomputed when the parts follow the source's own layout. Returns whether a comparison
    was possible; a mismatch raises SourceChanged (the attempt is abandoned, never completed).
    """
    ck = src.checksum
    if ck is None or ck.algorithm != algorithm or not parts:
        return False
    if ck.comparable():
        value = checksums.to_wire(algorithm, checksums.combine(algorithm, parts).value)
    elif src.composite_layout() and src.part_size and [p.length for p in parts] == [
            p.length for p in split(src.size, src.part_size)]:
        value = checksums.composite(algorithm, parts)
    else:
        return False
    if value != ck.value:
        raise SourceChanged(f"bytes read do not match the source's {algorithm} checksum")
    return True


def part_checksums(src: SourceObject, algorithm: str,
                   data: bytes | bytearray) -> list[checksums.PartChecksum]:
    """CRCs of ``data``, per source part when the source's checksum is COMPOSITE."""
    if not src.composite_layout() or not src.part_size or not data:
        return [checksums.compute(algorithm, data)]
    view = memoryview(data)
    return [checksums.compute(algorithm, view[p.start:p.end + 1])
            for p in split(len(data), src.part_size)]


_SEVERITY: tuple[type[BaseException], ...] = (GiveUp, SourceUnavailable, SourceChanged,
                                              Redeliver, RetryNow, FerryError, Exception)


def most_significant(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The leaf error that decides what happens to the job (give up beats retry)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in _SEVERITY:
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


async def gather_parts(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run parts in a TaskGroup (one failure cancels its siblings); raise one plain error."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as group_error:
        raise most_significant(group_error) from None
    return [t.result() for t in tasks]


class Transfer:
    """Runs plans. One per worker: ``budget`` (buffered bytes) and ``copy_budget`` (bytes
    the store copies server-side; None: no bound) are shared by every job."""

    def __init__(self, *, budget: ByteBudget, metrics: WorkerMetrics,
                 retry: RetryPolicy, request_timeout: float = 300.0,
                 copy_budget: ByteBudget | None = None, upload_quiet: float = 30.0) -> None:
        self._budget = budget
        self._copy_budget = copy_budget
        self._timeout = request_timeout
        self._metrics = metrics
        self._retry_policy = retry
        self.upload_quiet = upload_quiet  # seconds: see worker.multipart

    async def call(self, operation: str, context: str, fn: Callable[[], Awaitable[T]], *,
                   idempotent: bool = True) -> T:
        """One S3 call, classified, retried when transient, counted when it fails.

        A call that is not ``idempotent`` is sent again only after throttling (503 SlowDown:
        the store did nothing); any other failure may come after the store acted (a reset, a
        timeout, a 500 or a gateway's 502/504) and raises AnswerLost instead.
        """
        requests = self._metrics.s3_requests.labels(operation, context)

        async def attempt() -> T:
            requests.inc()
            try:
                async with asyncio.timeout(self._timeout):
                    return await fn()
            except FerryError:
                raise
            except Exception as exc:
                self._metrics.s3_errors.labels(operation, error_code(exc)).inc()
                error = classify(exc, operation=operation, context=context)
                if not idempotent and isinstance(error, RetryNow) and error.reason != "throttled":
                    raise AnswerLost(f"{operation} may have been done ({error}); not sent again"
                                     ) from exc
                raise error from exc

        def on_retry(exc: RetryNow, _: int) -> None:
            self._metrics.retries.labels(exc.reason).inc()

        return await retrying(attempt, self._retry_policy, on_retry)

    async def execute(self, plan: Plan, source: ByteSource, src: SourceObject,
                      dest: Destination, args: dict[str, Any], *,
                      final_attempt: bool) -> Written:
        if plan.strategy is Strategy.STREAM_PUT:
            return await self._stream_put(source, src, dest, args)
        if plan.strategy is Strategy.STREAM_MULTIPART:
            return await self._stream_multipart(plan, source, src, dest, args, final_attempt)
        copy_source = source.copy_source()
        if copy_source is None:
            raise GiveUp("server-side copy planned for a source that cannot be copied "
                         "server-side", reason="unsupported")
        if plan.strategy is Strategy.SERVER_COPY:
            return await self._server_copy(copy_source, src, dest, args)
        return await self._server_multipart(plan, copy_source, src, dest, args, final_attempt)

    # -- streamed -----------------------------------------------------------------------

    async def _read(self, source: ByteSource, src: SourceObject,
                    part: Part | None) -> bytes | bytearray:
        data = await self.call("GetObject", "source", partial(source.read, part, etag=src.etag))
        expected = part.length if part is not None else src.size
        if len(data) != expected:
            raise RetryNow(f"short read: {len(data)} of {expected} bytes",
                           reason="corrupt_transfer")
        return data

    def room(self, nbytes: int) -> AbstractAsyncContextManager[None]:
        """Room for ``nbytes`` in the process-wide buffer budget, held while the block runs."""
        return self._budget.take(nbytes)

    async def _stream_put(self, source: ByteSource, src: SourceObject, dest: Destination,
                          args: dict[str, Any]) -> Written:
        async with self._budget.take(src.size):
            data = await self._read(source, src, None)
            return await self.put_bytes(src, data, dest, args)

    async def put_bytes(self, src: SourceObject, data: bytes | bytearray, dest: Destination,
                        args: dict[str, Any]) -> Written:
        """One PUT of bytes already read (the caller holds a slot for them)."""
        started = time.monotonic()
        algorithm = checksum_algorithm(src)
        parts = part_checksums(src, algorithm, data)
        source_checked = check_source(src, algorithm, parts)
        wire = checksums.to_wire(algorithm, checksums.combine(algorithm, parts).value)
        put = dict(args)
        if dest.checksums:
            put[f"Checksum{algorithm}"] = wire
        else:
            put["ContentMD5"] = checksums.content_md5(data)
        response = await self.call("PutObject", "destination", partial(
            dest.client.put_object, Bucket=dest.bucket, Key=dest.key, Body=BufferBody(data),
            **put))
        self._metrics.part_duration.labels("put").observe(time.monotonic() - started)
        return Written(algorithm=algorithm if dest.checksums else None,
                       expected=wire if dest.checksums else None,
                       reported=response.get(f"Checksum{algorithm}"),
                       source_checked=source_checked, response=response,
                       fallback="upload_checksum" if dest.checksums else "content_md5")

    async def _stream_part(self, up: MultipartUpload, source: ByteSource, src: SourceObject,
                           dest: Destination, part: Part, algorithm: str) -> UploadedPart:
        async with self._budget.take(part.length):
            started = time.monotonic()
            data = await self._read(source, src, part)
            computed = checksums.compute(algorithm, data)
            wire = checksums.to_wire(algorithm, computed.value)
            kwargs: dict[str, Any] = {}
            if dest.checksums:
                kwargs[f"Checksum{algorithm}"] = wire
            else:
                kwargs["ContentMD5"] = checksums.content_md5(data)
            response = await self.call("UploadPart", "destination", partial(
                dest.client.upload_part, Bucket=dest.bucket, Key=dest.key,
                UploadId=up.upload_id, PartNumber=part.number, Body=BufferBody(data),
                **kwargs))
            self._metrics.part_duration.labels("upload_part").observe(
                time.monotonic() - started)
        return UploadedPart(part.number, response["ETag"], part.length, computed, wire)

    def open_uploads(self, dest: Destination) -> OpenUploads:
        """The multipart uploads open on the destination's key."""
        return OpenUploads(dest.client, self.call, bucket=dest.bucket, key=dest.key)

    def _may_resume(self, src: SourceObject, dest: Destination) -> Callable[[datetime], bool]:
        """Parts of an earlier upload are reused only if they provably hold this version.

        With a comparable source checksum and a checksumming destination the combined
        checksum is checked before completing, so stale parts cannot slip through; otherwise
        the upload must have started after the source was last modified (plus clock skew).
        """
        provable = dest.checksums and src.checksum is not None and (
            src.checksum.comparable() or src.composite_layout())

        def decide(initiated: datetime) -> bool:
            if provable:
                return True
            return src.last_modified is not None and initiated > src.last_modified + CLOCK_SKEW

        return decide

    async def _stream_multipart(self, plan: Plan, source: ByteSource, src: SourceObject,
                                dest: Destination, args: dict[str, Any],
                                final_attempt: bool) -> Written:
        algorithm = checksum_algorithm(src)
        create = dict(args)
        if dest.checksums:
            create.update(ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT")
        upload = MultipartUpload(
            self.open_uploads(dest), create_args=create,
            algorithm=algorithm if dest.checksums else None,
            expected_sizes={p.number: p.length for p in plan.parts}, quiet=self.upload_quiet,
            may_resume=self._may_resume(src, dest) if dest.endpoint.resume_uploads else None,
            last_attempt=final_attempt)
        async with upload as up:
            done = dict(up.existing)
            if up.resumed:
                self._metrics.uploads_resumed.inc()
                self._metrics.parts_reused.inc(len(done))
            todo = [p for p in plan.parts if p.number not in done]
            for part in await gather_parts(
                    self._stream_part(up, source, src, dest, p, algorithm) for p in todo):
                done[part.number] = part
            parts = [done[p.number] for p in plan.parts]
            return await self._complete(up, parts, src, dest, algorithm)

    async def _complete(self, up: MultipartUpload, parts: list[UploadedPart],
                        src: SourceObject, dest: Destination, algorithm: str) -> Written:
        source_checked, wire = False, None
        if all(p.checksum is not None for p in parts):
            crcs = [p.checksum for p in parts if p.checksum]
            source_checked = check_source(src, algorithm, crcs)
            wire = checksums.to_wire(algorithm, checksums.combine(algorithm, crcs).value)
        extra: dict[str, Any] = {"MpuObjectSize": src.size}
        if dest.checksums and wire:
            extra.update({f"Checksum{algorithm}": wire, "ChecksumType": "FULL_OBJECT"})
        response = await up.complete(parts, extra=extra)
        return Written(algorithm=algorithm if dest.checksums else None,
                       expected=wire if dest.checksums else None,
                       reported=response.get(f"Checksum{algorithm}"),
                       source_checked=source_checked, response=response, resumed=up.resumed,
                       fallback="upload_checksum" if dest.checksums else "content_md5")

    async def checksum_of(self, source: ByteSource, *, size: int, etag: str, algorithm: str,
                          part_size: int, side: str) -> str | None:
        """The full-object checksum of the bytes ``source`` gives, computed while they are read
        in parts under the byte budget; None when they did not come back whole."""
        async def one(part: Part) -> checksums.PartChecksum | None:
            async with self._budget.take(part.length):
                data = await self.call("GetObject", side,
                                       partial(source.read, part, etag=etag))
                return checksums.compute(algorithm, data) if len(data) == part.length else None

        crcs = await gather_parts(one(p) for p in split(size, part_size))
        if any(crc is None for crc in crcs):
            return None
        whole = checksums.combine(algorithm, [crc for crc in crcs if crc is not None])
        return checksums.to_wire(algorithm, whole.value)

    # -- server-side ----------------------------------------------------------------------

    async def _server_copy(self, copy_source: dict[str, str], src: SourceObject,
                           dest: Destination, args: dict[str, Any]) -> Written:
        algorithm = checksum_algorithm(src)
        kwargs = dict(args, MetadataDirective="REPLACE", TaggingDirective="REPLACE")
        if dest.checksums:
            kwargs["ChecksumAlgorithm"] = algorithm
        response = await self.copy_object(copy_source, src.etag, dest, kwargs, size=src.size)
        result = response.get("CopyObjectResult", {})
        expected = src.checksum.value if (
            src.checksum is not None and src.checksum.comparable()) else None
        return Written(algorithm=algorithm if dest.checksums else None, expected=expected,
                       reported=result.get(f"Checksum{algorithm}"),
                       source_checked=expected is not None, response=response,
                       fallback="server_pinned")

    @asynccontextmanager
    async def _store_copying(self, nbytes: int) -> AsyncIterator[None]:
        """Room for the store to copy ``nbytes`` for us, held (and shown in the
        ``server_copy_bytes`` gauge) while the block runs."""
        async with nullcontext() if self._copy_budget is None else self._copy_budget.take(
                nbytes):
            self._metrics.server_copy_bytes.inc(nbytes)
            try:
                yield
            finally:
                self._metrics.server_copy_bytes.dec(nbytes)

    async def copy_object(self, copy_source: dict[str, str], etag: str, dest: Destination,
                          args: dict[str, Any], *, size: int) -> dict[str, Any]:
        """One CopyObject of ``size`` bytes pinned to ``etag`` (the store refuses it if the
        source changed)."""
        async with self._store_copying(size):
            started = time.monotonic()
            response: dict[str, Any] = await self.call("CopyObject", "source", partial(
                dest.client.copy_object, Bucket=dest.bucket, Key=dest.key,
                CopySource=copy_source, CopySourceIfMatch=etag, **args))
            self._metrics.part_duration.labels("copy_object").observe(
                time.monotonic() - started)
        return response

    async def _copy_part(self, up: MultipartUpload, copy_source: dict[str, str],
                         src: SourceObject, dest: Destination, part: Part,
                         algorithm: str | None) -> UploadedPart:
        # no bytes buffered here: one unit of the buffer budget bounds the concurrency
        async with self._store_copying(part.length), self._budget.take(0):
            started = time.monotonic()
            response = await self.call("UploadPartCopy", "source", partial(
                dest.client.upload_part_copy, Bucket=dest.bucket, Key=dest.key,
                UploadId=up.upload_id, PartNumber=part.number, CopySource=copy_source,
                CopySourceIfMatch=src.etag, CopySourceRange=part.http_range))
            self._metrics.part_duration.labels("upload_part_copy").observe(
                time.monotonic() - started)
        result = response.get("CopyPartResult", {})
        if not result.get("ETag"):
            raise GiveUp("UploadPartCopy answered without an ETag; disable server_side_copy "
                         "for this endpoint", reason="unsupported")
        wire = result.get(f"Checksum{algorithm}") if algorithm else None
        crc = checksums.PartChecksum(checksums.from_wire(algorithm, wire), part.length) if (
            algorithm and wire) else None
        return UploadedPart(part.number, result["ETag"], part.length, crc, wire)

    async def _server_multipart(self, plan: Plan, copy_source: dict[str, str],
                                src: SourceObject, dest: Destination, args: dict[str, Any],
                                final_attempt: bool) -> Written:
        algorithm = checksum_algorithm(src) if dest.checksums else None
        create = dict(args)
        if algorithm:
            create.update(ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT")
        upload = MultipartUpload(
            self.open_uploads(dest), create_args=create, algorithm=algorithm,
            expected_sizes={p.number: p.length for p in plan.parts}, quiet=self.upload_quiet,
            last_attempt=final_attempt)  # parts copied server-side are never adopted
        async with upload as up:
            parts = await gather_parts(
                self._copy_part(up, copy_source, src, dest, p, algorithm) for p in plan.parts)
            if algorithm and all(p.checksum is not None for p in parts):
                return await self._complete(up, parts, src, dest, algorithm)
            up.algorithm = None
            response = await up.complete(parts, extra={})
        return Written(algorithm=None, expected=None, reported=None, source_checked=False,
                       response=response, fallback="server_pinned")
