"""Full-object CRC checksums in S3's wire form, computed per part and combined.

S3 reports full-object checksums as base64 of the big-endian CRC. Parts copied in parallel are
checksummed separately and combined (awscrt's ``combine_*``), so a multipart copy still yields
one value to compare with the source's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awscrt import checksums as crt

# Algorithms that can be combined across parts, with their width in bytes.
_ALGORITHMS: dict[str, tuple[Callable[..., int], Callable[[int, int, int], int], int]] = {
    "CRC32": (crt.crc32, crt.combine_crc32, 4),
    "CRC32C": (crt.crc32c, crt.combine_crc32c, 4),
    "CRC64NVME": (crt.crc64nvme, crt.combine_crc64nvme, 8),
}
DEFAULT_ALGORITHM = "CRC64NVME"
ALL_ALGORITHMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")


def combinable(algorithm: str) -> bool:
    return algorithm in _ALGORITHMS


@dataclass(frozen=True, slots=True)
class PartChecksum:
    """CRC of one part as an integer, with the part's length (needed to combine)."""

    value: int
    length: int


def compute(algorithm: str, data: bytes | bytearray | memoryview) -> PartChecksum:
    fn, _, _ = _ALGORITHMS[algorithm]
    return PartChecksum(fn(data), len(data))


def combine(algorithm: str, parts: Iterable[PartChecksum]) -> PartChecksum:
    """CRC of the concatenation of ``parts`` (in order)."""
    _, comb, _ = _ALGORITHMS[algorithm]
    value, length = 0, 0
    for i, part in enumerate(parts):
        value = part.value if i == 0 else comb(value, part.value, part.length)
        length += part.length
    return PartChecksum(value, length)


def composite(algorithm: str, parts: Sequence[PartChecksum]) -> str:
    """S3's COMPOSITE value: the checksum of the parts' checksums, then ``-<part count>``."""
    fn, _, width = _ALGORITHMS[algorithm]
    raw = b"".join(p.value.to_bytes(width, "big") for p in parts)
    return f"{to_wire(algorithm, fn(raw))}-{len(parts)}"


def content_md5(data: bytes | bytearray | memoryview) -> str:
    """The Content-MD5 header of ``data``, for stores that take no flexible checksums."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def to_wire(algorithm: str, value: int) -> str:
    _, _, width = _ALGORITHMS[algorithm]
    return base64.b64encode(value.to_bytes(width, "big")).decode("ascii")


def from_wire(algorithm: str, text: str) -> int:
    _, _, width = _ALGORITHMS[algorithm]
    raw = base64.b64decode(text)
    if len(raw) != width:
        raise ValueError(f"{algorithm} checksum has {len(raw)} bytes, expected {width}")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class ObjectChecksum:
    """A checksum S3 reported for a whole object: algorithm, wire value, and its type.

    ``full_object`` is False for COMPOSITE checksums (a checksum of part checksums), which
    depend on the part layout and so cannot be compared with a copy made in other parts.
    """

    algorithm: str
    value: str
    full_object: bool

    def comparable(self) -> bool:
        return self.full_object and combinable(self.algorithm)


def from_response(response: Mapping[str, Any]) -> ObjectChecksum | None:
    """The strongest checksum in a HEAD/GET/Complete answer, or None."""
    ctype = response.get("ChecksumType")
    for algorithm in ALL_ALGORITHMS:
        value = response.get(f"Checksum{algorithm}")
        if not value:
            continue
        if "-" in value:  # "abc==-3": composite, value of the part checksums
            return ObjectChecksum(algorithm, value, False)
        full = ctype != "COMPOSITE" if ctype else True
        return ObjectChecksum(algorithm, value, full)
    return None
