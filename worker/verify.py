"""Proof that a copy is right: size plus a checksum, or a named weaker method.

Methods, strongest first (exported as ``s3ferry_verified_total{method}``):

* ``source_checksum``   what we read equals the source's own full-object checksum, and the
                        destination reports that same checksum;
* ``computed_checksum`` the source has none: the checksum computed while streaming was sent
                        with the upload, validated by the destination and reported back;
* ``content_md5``       the destination takes no flexible checksums (some S3-compatible
                        stores): every PUT/part carried a Content-MD5 the store validated,
                        and the destination's size is checked;
* ``upload_checksum``   the destination validated the checksum sent with the upload but does
                        not report it back;
* ``server_pinned``     a server-side copy of a source without a comparable checksum: the
                        store copied the pinned ETag itself; the size is checked.

A mismatch raises VerificationFailed: never a silent bad copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.checksums import from_response
from common.errors import VerificationFailed
from common.fingerprint import SOURCE_ETAG
from worker.source import SourceObject
from worker.transfer import Written


def verify_response(written: Written) -> str | None:
    """Verify from the write's own answer when it carries the checksum; None if it does not."""
    if written.algorithm is None or written.expected is None or written.reported is None:
        return None
    if written.reported != written.expected:
        raise VerificationFailed(
            f"destination reports {written.algorithm} {written.reported}, "
            f"expected {written.expected}")
    return "source_checksum" if written.source_checked else "computed_checksum"


def verify_head(head: Mapping[str, Any], src: SourceObject, written: Written) -> str:
    """Verify from a HEAD of the destination (for writes whose answer had no checksum)."""
    size = int(head.get("ContentLength", -1))
    if size != src.size:
        raise VerificationFailed(f"destination has {size} bytes, source has {src.size}")
    stored_etag = (head.get("Metadata") or {}).get(SOURCE_ETAG)
    if stored_etag is not None and stored_etag != src.etag.strip('"'):
        raise VerificationFailed("destination was written from another source version")
    reported = from_response(head)
    comparable = (written.expected is not None and reported is not None
                  and reported.full_object and reported.algorithm == written.algorithm)
    if comparable:
        assert reported is not None
        if reported.value != written.expected:
            raise VerificationFailed(
                f"destination reports {reported.algorithm} {reported.value}, "
                f"expected {written.expected}")
        return "source_checksum" if written.source_checked else "computed_checksum"
    return written.fallback
