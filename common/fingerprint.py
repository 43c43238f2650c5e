"""What the worker writes into a destination's user metadata so later runs can trust it.

The backfill diff (``checksum`` compare mode) and the worker's idempotency check read these
through :func:`holds_copy`; they are the only user-metadata keys s3ferry adds, and
``user_metadata`` strips them when comparing a copy with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.checksums import ObjectChecksum, from_response

PREFIX = "s3ferry-"
SOURCE_ETAG = "s3ferry-source-etag"
SOURCE_VERSION = "s3ferry-source-version"
SEQUENCER = "s3ferry-sequencer"


def fingerprint(*, etag: str, version_id: str | None, sequencer: str | None) -> dict[str, str]:
    out = {SOURCE_ETAG: etag.strip('"')}
    if version_id:
        out[SOURCE_VERSION] = version_id
    if sequencer:
        out[SEQUENCER] = sequencer
    return out


def user_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The user's own metadata: what the source had, without s3ferry's bookkeeping."""
    return {k: v for k, v in metadata.items() if not k.lower().startswith(PREFIX)}


def sequencer_key(sequencer: str) -> str:
    """S3 sequencers are hex strings of varying length: left-pad before comparing."""
    return sequencer.upper().rjust(32, "0")


def newer_than(candidate: str | None, applied: str | None) -> bool:
    """True when ``candidate`` is strictly newer than ``applied`` (unknowns never block)."""
    if candidate is None or applied is None:
        return True
    return sequencer_key(candidate) > sequencer_key(applied)


def holds_copy(head: Mapping[str, Any] | None, *, size: int | None, etag: str,
               checksum: ObjectChecksum | None, same_store: bool = False) -> str:
    """Why a destination (its HEAD) holds the source's bytes ("" when that cannot be shown).

    The evidence: our fingerprint (the source ETag stored at copy time), equal full-object
    checksums, or, within one store (``same_store``), equal ETags. ETags are not compared
    across stores: what they mean (MD5, multipart, KMS, a vendor's own hash) is each store's.
    """
    if head is None or head.get("ContentLength", -1) != size:
        return ""
    etag = etag.strip('"')
    if etag and (head.get("Metadata") or {}).get(SOURCE_ETAG) == etag:
        return "fingerprint"
    if same_store and etag and str(head.get("ETag", "")).strip('"') == etag:
        return "etag"
    theirs = from_response(head)
    if checksum and theirs and checksum.comparable() and theirs.comparable() and (
            checksum.algorithm, checksum.value) == (theirs.algorithm, theirs.value):
        return "checksum"
    return ""
