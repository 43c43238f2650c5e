"""A multipart upload as an async context manager: acquire, then register cleanup at once.

On entry it adopts an earlier upload of the same key when the caller allows (a worker killed
mid-copy left it), otherwise creates one. On exit without :meth:`complete` it aborts when the
failure is final and keeps the upload when the job will be redelivered, so the next attempt
continues from the parts already there instead of starting over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from common.checksums import PartChecksum, from_wire
from common.errors import FerryError, GiveUp, Outcome, SourceChanged
from common.logs import get_logger
from common.s3errors import classify, error_code

log = get_logger(__name__)


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
    return isinstance(exc, GiveUp | Outcome | SourceChanged) or (
        isinstance(exc, FerryError) and getattr(exc, "final", False))


class MultipartUpload:
    """One destination upload: ``async with MultipartUpload(...) as up: ...; await up.complete()``.

    ``may_resume(initiated)`` decides whether an existing upload started at ``initiated`` may
    be continued; ``expected_sizes`` maps part number to planned length, and a found part of
    another length is not reused.
    """

    def __init__(self, client: Any, *, bucket: str, key: str, create_args: dict[str, Any],
                 algorithm: str | None, expected_sizes: dict[int, int],
                 may_resume: Callable[[datetime], bool] | None = None,
                 abort_always: bool = False) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self._create_args = create_args
        self.algorithm = algorithm
        self._expected = expected_sizes
        self._may_resume = may_resume
        self._abort_always = abort_always
        self.upload_id = ""
        self.resumed = False
        self.existing: dict[int, UploadedPart] = {}
        self._completed = False

    async def __aenter__(self) -> MultipartUpload:
        if self._may_resume is not None and await self._adopt():
            return self
        try:
            response = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self._create_args)
        except Exception as exc:
            raise classify(exc, operation="CreateMultipartUpload",
                           context="destination") from exc
        self.upload_id = response["UploadId"]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._completed:
            return
        if exc is None or self._abort_always or final_failure(exc):
            await asyncio.shield(self.abort())
        else:
            log.info("upload_kept_for_resume", upload_parts=len(self.existing),
                     error=type(exc).__name__)

    async def abort(self) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # best effort: a lifecycle rule catches leftovers
            log.warning("upload_abort_failed", error=str(classify(
                exc, operation="AbortMultipartUpload", context="destination")))

    async def _adopt(self) -> bool:
        try:
            response = await self._client.list_multipart_uploads(
                Bucket=self.bucket, Prefix=self.key)
        except Exception as exc:
            if error_code(exc) == "NoSuchUpload":  # rclone's answer for "none in progress"
                return False
            raise classify(exc, operation="ListMultipartUploads",
                           context="destination") from exc
        candidates = [u for u in response.get("Uploads", []) if u["Key"] == self.key]
        candidates.sort(key=lambda u: u["Initiated"], reverse=True)
        assert self._may_resume is not None
        for upload in candidates:
            if not self._may_resume(upload["Initiated"]):
                continue
            parts = await self._list_parts(upload["UploadId"])
            if parts is None:
                continue
            self.upload_id = upload["UploadId"]
            self.existing = parts
            self.resumed = True
            log.info("upload_resumed", parts_found=len(parts))
            return True
        return False

    async def _list_parts(self, upload_id: str) -> dict[int, UploadedPart] | None:
        found: dict[int, UploadedPart] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "UploadId": upload_id}
        while True:
            try:
                response = await self._client.list_parts(**kwargs)
            except Exception as exc:
                err = classify(exc, operation="ListParts", context="destination")
                if "NoSuchUpload" in str(err):
                    return None
                raise err from exc
            for p in response.get("Parts", []):
                part = self._reusable(p)
                if part is not None:
                    found[part.number] = part
            if not response.get("IsTruncated"):
                return found
            kwargs["PartNumberMarker"] = response["NextPartNumberMarker"]

    def _reusable(self, p: dict[str, Any]) -> UploadedPart | None:
        number, size = int(p["PartNumber"]), int(p["Size"])
        if self._expected.get(number) != size or not p.get("ETag"):
            return None
        wire = p.get(f"Checksum{self.algorithm}") if self.algorithm else None
        if self.algorithm and not wire:
            return None  # cannot prove its content: upload it again
        checksum = PartChecksum(from_wire(self.algorithm, wire), size) if (
            self.algorithm and wire) else None
        return UploadedPart(number, p["ETag"], size, checksum, wire)

    async def complete(self, parts: list[UploadedPart], *,
                       extra: dict[str, Any]) -> dict[str, Any]:
        ordered = sorted(parts, key=lambda p: p.number)
        try:
            response: dict[str, Any] = await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": [p.completed(self.algorithm) for p in ordered]},
                **extra)
        except Exception as exc:
            raise classify(exc, operation="CompleteMultipartUpload",
                           context="destination") from exc
        self._completed = True
        return response
