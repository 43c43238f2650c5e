"""Where the bytes come from: the one seam between "an S3 client" and "a presigned URL".

A :class:`ByteSource` answers three questions: what is the object (``head``), give me these
bytes of exactly that version (``read`` with an If-Match pin), and what are its tags. Transfer
code only sees this protocol; server-side copies additionally ask ``copy_source`` and get
``None`` from sources that cannot be copied server-side (a presigned URL, another endpoint).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter

from common.checksums import ObjectChecksum, combinable, from_response
from common.errors import SourceArchived
from common.limits import ARCHIVE_CLASSES
from common.s3errors import translated
from worker.planner import Part

HEADER_FIELDS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
                 "ContentLanguage", "Expires")


@dataclass(frozen=True, kw_only=True)
class SourceObject:
    """What HEAD said about the source, pinned by ``etag`` for every later read."""

    size: int
    etag: str
    version_id: str | None = None
    last_modified: datetime | None = None
    checksum: ObjectChecksum | None = None
    storage_class: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    tag_count: int | None = None  # None: unknown (AWS's HEAD does not say)
    part_size: int | None = None  # the source's own part layout, when its checksum needs it
    parts_count: int | None = None

    def composite_layout(self) -> bool:
        """The source's checksum is COMPOSITE and its part layout is known."""
        return (self.checksum is not None and not self.checksum.full_object
                and combinable(self.checksum.algorithm) and bool(self.part_size)
                and bool(self.parts_count))


def source_object_from_head(head: Mapping[str, Any]) -> SourceObject:
    """Build a SourceObject from a HEAD answer; refuse archived objects up front."""
    storage_class = head.get("StorageClass")
    restore = str(head.get("Restore") or "")
    restored = 'ongoing-request="false"' in restore
    archived = (storage_class in ARCHIVE_CLASSES and not restored) or head.get(
        "ArchiveStatus") in {"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"}
    if archived:
        raise SourceArchived(f"source is archived ({storage_class or head.get('ArchiveStatus')})"
                             "; restore it first")
    headers = {k: head[k] for k in HEADER_FIELDS if head.get(k) is not None}
    if "Expires" not in headers and head.get("ExpiresString"):
        headers["Expires"] = head["ExpiresString"]
    return SourceObject(
        size=int(head["ContentLength"]),
        etag=str(head["ETag"]),
        version_id=head.get("VersionId"),
        last_modified=head.get("LastModified"),
        checksum=from_response(head),
        storage_class=storage_class,
        headers=headers,
        metadata=dict(head.get("Metadata") or {}),
        tag_count=head.get("TagCount"),
    )


READ_CHUNK = 1024 * 1024


async def read_exactly(body: Any, length: int) -> bytearray:
    """Read a response body into one buffer of its announced length.

    One allocation per part: reading everything and joining the pieces, as a plain
    ``read()`` does, briefly holds every part twice. A short body comes back short (the
    caller checks lengths).
    """
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    while filled < length:
        chunk = await body.read(min(READ_CHUNK, length - filled))
        if not chunk:
            break
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    view.release()
    if filled < length:
        del buffer[filled:]
    return buffer


class BufferBody(io.RawIOBase):
    """A seekable, read-only file over a part buffer, so uploads send it without a copy.

    botocore wraps only ``bytes`` bodies (in BytesIO); aiohttp refuses large raw buffers.
    aiohttp sends it with :class:`BufferBodyPayload`.
    """

    def __init__(self, buffer: bytes | bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer).toreadonly()
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def view(self) -> memoryview:
        """The whole buffer, read-only, whatever the position."""
        return self._view

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n = min(len(target), len(self._view) - self._pos)
        target[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(base + offset, len(self._view)))
        return self._pos

    def tell(self) -> int:
        return self._pos


SEND_CHUNK = 256 * 1024


class BufferBodyPayload(aiohttp.payload.Payload):
    """aiohttp's request body for a :class:`BufferBody`: slices of its buffer, sent in place.

    aiohttp's generic file payload reads any file in its thread pool, 64 KiB per hop, and
    closes it in the pool too; these bytes are already in memory. The body is sent from its
    position when the request is built (botocore seeks it back to 0 before a retry) to its
    end, and again from there if aiohttp resends it (a redirect). Slices of ``SEND_CHUNK``
    let the writer drain between them, so the socket buffer never holds a second whole part.
    The body may come wrapped in aiobotocore's ``_IOBaseWrapper`` proxy.
    """

    _autoclose = True  # nothing to release: the buffer belongs to the caller

    def __init__(self, value: BufferBody, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._view = value.view()
        self._start = value.tell()
        self._size = len(self._view) - self._start

    def _end(self, limit: int | None) -> int:
        return len(self._view) if limit is None else min(len(self._view), self._start + limit)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        end = self._end(content_length)
        for offset in range(self._start, end, SEND_CHUNK):
            await writer.write(self._view[offset:min(offset + SEND_CHUNK, end)])
        self._value.seek(end)  # consumed, as a file read to its end would be

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._view[self._start:]).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return bytes(self._view[self._start:])


# First in line: aiohttp would otherwise pick its generic file payload for any io.IOBase.
aiohttp.payload.PAYLOAD_REGISTRY.register(BufferBodyPayload, BufferBody,
                                          order=aiohttp.payload.Order.try_first)


class ByteSource(Protocol):
    """Reads one source object. Implementations: :class:`S3Source` (later: presigned URLs)."""

    description: str

    async def head(self) -> SourceObject: ...

    async def read(self, part: Part | None, *, etag: str) -> bytes | bytearray:
        """The bytes of ``part`` (or the whole object), only if the ETag still matches."""
        ...

    async def fetch(self, *, etag: str) -> tuple[SourceObject, bytes]:
        """The whole object and what its GET said about it, only if the ETag matches.

        One request instead of HEAD + GET: the fast path for small objects.
        """
        ...

    async def tags(self) -> dict[str, str]: ...

    def copy_source(self) -> dict[str, str] | None:
        """The CopySource argument for a server-side copy, or None when impossible."""
        ...


class S3Source:
    """A source read with an S3 client (the normal case)."""

    def __init__(self, client: Any, *, bucket: str, key: str,
                 version_id: str | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.version_id = version_id
        self.description = f"s3://{bucket}"

    def _ref(self) -> dict[str, str]:
        ref = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id:
            ref["VersionId"] = self.version_id
        return ref

    async def head(self) -> SourceObject:
        with translated("HeadObject", "source"):
            head = await self._client.head_object(**self._ref(), ChecksumMode="ENABLED")
        src = source_object_from_head(head)
        if src.checksum is not None and not src.checksum.full_object:
            src = await self._with_layout(src)
        return src

    async def _with_layout(self, src: SourceObject) -> SourceObject:
        """A COMPOSITE checksum can only be recomputed in the source's own part layout."""
        with translated("HeadObject", "source"):
            first = await self._client.head_object(**self._ref(), PartNumber=1,
                                                   IfMatch=src.etag)
        count = first.get("PartsCount")
        if not count:
            return src
        return replace(src, part_size=int(first["ContentLength"]), parts_count=int(count))

    async def read(self, part: Part | None, *, etag: str) -> bytes | bytearray:
        kwargs: dict[str, Any] = {**self._ref(), "IfMatch": etag}
        if part is not None:
            kwargs["Range"] = part.http_range
        with translated("GetObject", "source"):
            response = await self._client.get_object(**kwargs)
            async with response["Body"]:
                return await read_exactly(response["Body"], int(response["ContentLength"]))

    async def fetch(self, *, etag: str) -> tuple[SourceObject, bytes]:
        with translated("GetObject", "source"):
            response = await self._client.get_object(**self._ref(), IfMatch=etag,
                                                     ChecksumMode="ENABLED")
            async with response["Body"] as body:
                data: bytes = await body.read()
        # A GET states x-amz-tagging-count only when the object has tags.
        return replace(source_object_from_head(response),
                       tag_count=int(response.get("TagCount") or 0)), data

    async def tags(self) -> dict[str, str]:
        with translated("GetObjectTagging", "source"):
            response = await self._client.get_object_tagging(**self._ref())
        return {t["Key"]: t["Value"] for t in response.get("TagSet", [])}

    def copy_source(self) -> dict[str, str] | None:
        return self._ref()
