"""A multipart upload as an async context manager, with an owner.

An upload belongs to the attempt that created or adopted it, and only while that attempt
runs; it ends completed, aborted, or kept for the job's next attempt. On entry an attempt
looks at every upload already open on its key. Each was left by a worker that was killed, by
an attempt that failed and kept it, or is being driven right now by another worker holding
a duplicate of the job. The store's clocks tell them apart (:func:`settle`):

* **quiet** uploads (nothing started or uploaded for ``quiet`` seconds, half a lease) are
  taken to have no live driver: a worker gives up a job whose lease went unrenewed for half
  of it (:mod:`worker.consumer`), so a killed or cut-off driver is quiet by the time its job
  comes back. The newest quiet upload whose parts provably hold this source version (and that
  was made with our checksum algorithm) is adopted; every other quiet one is aborted.
* an upload that is **not quiet** may have a live driver. The attempt steps back
  (:class:`~common.errors.UploadBusy`, retried once the upload would be quiet; it never counts
  against the job's attempts) unless it is the job's last attempt: then it aborts the upload
  and goes on.

Quiet is a judgement: a live driver whose parts wait longer than ``quiet`` (a slow part,
a full byte budget) can be taken for a dead one. That costs work, never a copy: an upload
taken over keeps its provable parts and its driver steps back at its claim check (below),
and one aborted under its driver ends in NoSuchUpload, which re-checks the destination and
steps back while another upload of the key is live (:mod:`worker.replicate`).

Two attempts may find the same quiet upload at the same moment (duplicates of one job), and
S3 has no compare-and-set on an upload. So an adopter *claims* it: it uploads a part of its
own, at part number 10,000 (:data:`CLAIM_PART`, never data: the planner stops at 9,999), and
reads the part back. The last claim wins: an adopter that reads another's claim steps back at
once, and every driver checks before completing that the claim is still its own (a creator:
that there is none), so one upload is only ever completed by its one owner. Complete names
the data parts only; S3 discards the claim.

On exit without :meth:`MultipartUpload.complete` the upload is aborted when the failure is
final or the attempt was the last, and kept otherwise: the error then carries
``retry_after = quiet``, so the next attempt finds it quiet and continues from its parts. A
CreateMultipartUpload whose answer was lost is not sent again; the next attempt finds the
upload the store made, quiet (a last attempt aborts what it finds live instead).
:func:`clear_quiet` aborts the quiet uploads a redelivered job finds on its key when it ends
without a multipart copy of its own (skipped, vanished, dead-lettered).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from types import TracebackType
from typing import Any, Protocol, TypeVar

from common.checksums import PartChecksum, compute, content_md5, from_wire, to_wire
from common.errors import (
    AnswerLost,
    FerryError,
    GiveUp,
    SourceChanged,
    SourceUnavailable,
    UploadBusy,
    UploadGone,
)
from common.limits import CLAIM_PART
from common.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Call(Protocol):
    """:meth:`worker.transfer.Transfer.call`: one S3 call, classified, retried when transient
    (unless ``idempotent`` is False and the answer may have been lost), counted."""

    def __call__(self, operation: str, context: str, fn: Callable[[], Awaitable[T]], *,
                 idempotent: bool = True) -> Awaitable[T]: ...


@dataclass(frozen=True, slots=True)
class UploadedPart:
    number: int
    etag: str
    size: int
    checksum: PartChecksum | None = None
    checksum_wire: str | None = None

    def completed(self, algorithm: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"PartNumber": self.number, "ETag": self.etag}
        if algorithm and self.checksum_wire:
            out[f"Checksum{algorithm}"] = self.checksum_wire
        return out


def final_failure(exc: BaseException | None) -> bool:
    """Failures after which a kept upload could never be completed correctly."""
    return isinstance(exc, GiveUp | SourceUnavailable | SourceChanged) or (
        isinstance(exc, FerryError) and getattr(exc, "final", False))


@dataclass(frozen=True)
class OpenUpload:
    """An upload found open on the key, and how long it has been idle by the store's clock."""

    upload_id: str
    initiated: datetime
    idle_seconds: float
    parts: tuple[dict[str, Any], ...] = ()
    algorithm: str | None = None  # the checksum algorithm it was created with


@dataclass(frozen=True)
class Settlement:
    """What to do with the uploads open on a key (:func:`settle`)."""

    adopt: OpenUpload | None = None
    abort: tuple[OpenUpload, ...] = ()
    busy_for: float = 0.0  # > 0: step back this many seconds, a live driver may hold one


def settle(found: Sequence[OpenUpload], *, quiet: float, last_attempt: bool,
           provable: Callable[[OpenUpload], bool]) -> Settlement:
    """Pure: adopt the newest quiet provable upload, abort the other quiet ones; uploads that
    are not quiet make the attempt step back, or on its last attempt are aborted too."""
    busy = [u for u in found if u.idle_seconds < quiet]
    if busy and not last_attempt:
        wait = quiet - min(u.idle_seconds for u in busy)
        return Settlement(abort=tuple(u for u in found if u not in busy and not provable(u)),
                          busy_for=max(1.0, wait))
    adopt = next((u for u in sorted(found, key=lambda u: u.initiated, reverse=True)
                  if u not in busy and provable(u)), None)
    return Settlement(adopt=adopt, abort=tuple(u for u in found if u is not adopt))


def _store_now(response: dict[str, Any]) -> datetime:
    """The store's clock, from its answer's Date header (ours if it sent none)."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else datetime.now(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class OpenUploads:
    """Lists, inspects and aborts the uploads open on one destination key."""

    def __init__(self, client: Any, call: Call, *, bucket: str, key: str) -> None:
        self.client = client
        self.call = call
        self.bucket = bucket
        self.key = key

    async def find(self) -> list[OpenUpload]:
        """Every upload open on exactly this key, with its parts and idle time."""
        try:
            response = await self.call("ListMultipartUploads", "destination", partial(
                self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self.key))
        except UploadGone:  # rclone's answer for "none in progress"
            return []
        found = []
        for upload in response.get("Uploads", []):
            if upload["Key"] != self.key:
                continue
            listed = await self.parts(upload["UploadId"])
            if listed is None:  # completed or aborted meanwhile
                continue
            parts, now = listed
            active = max([upload["Initiated"], *(p["LastModified"] for p in parts
                                                 if p.get("LastModified"))])
            found.append(OpenUpload(upload["UploadId"], upload["Initiated"],
                                    (now - active).total_seconds(), tuple(parts),
                                    upload.get("ChecksumAlgorithm")))
        return found

    async def parts(self, upload_id: str) -> tuple[list[dict[str, Any]], datetime] | None:
        """Every part of an upload and the store's clock; None when it is gone."""
        parts: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "UploadId": upload_id}
        while True:
            try:
                response = await self.call("ListParts", "destination",
                                            partial(self.client.list_parts, **kwargs))
            except UploadGone:
                return None
            parts.extend(response.get("Parts", []))
            if not response.get("IsTruncated"):
                return parts, _store_now(response)
            kwargs["PartNumberMarker"] = response["NextPartNumberMarker"]

    async def abort(self, upload_id: str) -> None:
        """Abort one upload; one already gone is fine. Other failures propagate: an upload
        that cannot be aborted now is left for the job's next attempt, not forgotten."""
        try:
            await self.call("AbortMultipartUpload", "destination", partial(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=self.key,
                UploadId=upload_id))
        except UploadGone:
            return
        log.info("upload_aborted")


async def clear_quiet(uploads: OpenUploads, *, quiet: float) -> int:
    """Abort the quiet uploads open on the key (what killed attempts left); returns how many."""
    found = [u for u in await uploads.find() if u.idle_seconds >= quiet]
    for upload in found:
        await uploads.abort(upload.upload_id)
    return len(found)


@dataclass
class MultipartUpload:
    """One destination upload: ``async with MultipartUpload(...) as up: ...; await
    up.complete(...)``.

    ``may_resume(initiated)`` says whether an upload started at ``initiated`` may hold parts of
    this source version (None: never adopt); ``expected_sizes`` maps part number to planned
    length, and a found part of another length is not reused. ``last_attempt``: the job will
    not be tried again, so nothing is kept and no live driver is waited for.
    """

    uploads: OpenUploads
    create_args: dict[str, Any]
    algorithm: str | None
    expected_sizes: dict[int, int]
    quiet: float
    may_resume: Callable[[datetime], bool] | None = None
    last_attempt: bool = False
    upload_id: str = ""
    resumed: bool = False
    existing: dict[int, UploadedPart] = field(default_factory=dict)
    _claim: str | None = None  # the ETag of our claim part; None: we created it, unclaimed
    _owned: bool = True  # False once another attempt's claim is found: theirs now
    _completed: bool = False

    @property
    def bucket(self) -> str:
        return self.uploads.bucket

    @property
    def key(self) -> str:
        return self.uploads.key

    async def __aenter__(self) -> MultipartUpload:
        found = await self.uploads.find()
        plan = settle(found, quiet=self.quiet, last_attempt=self.last_attempt,
                      provable=self._provable)
        for upload in plan.abort:
            await self.uploads.abort(upload.upload_id)
        if plan.busy_for:
            log.info("upload_busy", retry_in=round(plan.busy_for, 1))
            raise UploadBusy("another attempt may be writing this key", retry_after=plan.busy_for)
        if plan.adopt is not None:
            self._adopt(plan.adopt)
            await self._take_over()
            return self
        try:  # not sent again when its answer is lost: that would open a second upload
            response = await self.uploads.call("CreateMultipartUpload", "destination", partial(
                self.uploads.client.create_multipart_upload, Bucket=self.bucket,
                Key=self.key, **self.create_args), idempotent=False)
        except AnswerLost as exc:  # the next attempt finds it, quiet, and takes it over
            exc.retry_after = max(exc.retry_after, self.quiet)
            if self.last_attempt:  # there is none: abort what the store may have made
                await self._abort_live()
            raise
        self.upload_id = response["UploadId"]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._completed or not self._owned or isinstance(exc, UploadGone):
            return
        if exc is None or self.last_attempt or self.may_resume is None or final_failure(exc):
            await asyncio.shield(self._abort_quietly())  # nobody could continue it
            return
        if isinstance(exc, FerryError):
            exc.retry_after = max(exc.retry_after, self.quiet)
        log.info("upload_kept_for_resume", upload_parts=len(self.existing),
                 error=type(exc).__name__)

    async def _abort_quietly(self) -> None:
        try:
            await self.uploads.abort(self.upload_id)
        except Exception as exc:  # left open: a redelivered job on this key clears it
            log.warning("upload_abort_failed", error=str(exc))

    async def _abort_live(self) -> None:
        """A last attempt's lost CreateMultipartUpload: abort the uploads of the key that are
        not quiet (ours among them), as a last attempt aborts any live one it finds."""
        for upload in await self.uploads.find():
            if upload.idle_seconds < self.quiet:
                await self.uploads.abort(upload.upload_id)

    def _provable(self, upload: OpenUpload) -> bool:
        return (self.may_resume is not None and upload.algorithm == self.algorithm
                and self.may_resume(upload.initiated))

    def _adopt(self, upload: OpenUpload) -> None:
        self.upload_id = upload.upload_id
        self.existing = {p.number: p for p in map(self._reusable, upload.parts)
                         if p is not None}
        self.resumed = True

    async def _take_over(self) -> None:
        """Claim the adopted upload and read the claim back: the last claim wins."""
        token = uuid.uuid4().hex.encode("ascii")
        if self.algorithm:
            proof = {f"Checksum{self.algorithm}": to_wire(self.algorithm,
                                                          compute(self.algorithm, token).value)}
        else:
            proof = {"ContentMD5": content_md5(token)}
        answer = await self.uploads.call("UploadPart", "destination", partial(
            self.uploads.client.upload_part, Bucket=self.bucket, Key=self.key,
            UploadId=self.upload_id, PartNumber=CLAIM_PART, Body=token, **proof))
        self._claim = answer["ETag"]
        await self._check_owner("another attempt claimed this upload at the same moment")
        log.info("upload_resumed", parts_found=len(self.existing))

    async def _check_owner(self, why: str) -> None:
        """Raise UploadBusy (and let the upload be) when another attempt's claim is on it.

        Every page of parts is read: some stores (rclone's) break on a part-number-marker
        past the parts they hold."""
        listed = await self.uploads.parts(self.upload_id)
        if listed is None:
            raise UploadGone("the upload was completed or aborted by another attempt")
        claim = next((p["ETag"] for p in listed[0] if int(p["PartNumber"]) == CLAIM_PART), None)
        if claim != self._claim:
            self._owned = False
            log.info("upload_taken_over")
            raise UploadBusy(why, retry_after=self.quiet)

    def _reusable(self, p: dict[str, Any]) -> UploadedPart | None:
        number, size = int(p["PartNumber"]), int(p["Size"])
        if self.expected_sizes.get(number) != size or not p.get("ETag"):
            return None
        wire = p.get(f"Checksum{self.algorithm}") if self.algorithm else None
        if self.algorithm and not wire:
            return None  # cannot prove its content: upload it again
        checksum = PartChecksum(from_wire(self.algorithm, wire), size) if (
            self.algorithm and wire) else None
        return UploadedPart(number, p["ETag"], size, checksum, wire)

    async def complete(self, parts: list[UploadedPart], *,
                       extra: dict[str, Any]) -> dict[str, Any]:
        """Complete with ``parts`` if the upload is still ours (UploadBusy if another attempt
        took it over); raises UploadGone when it is no longer there."""
        await self._check_owner("another attempt took this upload over")
        ordered = sorted(parts, key=lambda p: p.number)
        response: dict[str, Any] = await self.uploads.call(
            "CompleteMultipartUpload", "destination", partial(
                self.uploads.client.complete_multipart_upload, Bucket=self.bucket, Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [p.completed(self.algorithm) for p in ordered]},
                **extra))
        self._completed = True
        return response
