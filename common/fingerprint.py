"""What the worker writes into a destination's user metadata so later runs can trust it.

The backfill diff (``checksum`` compare mode) and the worker's idempotency check read these;
they are the only user-metadata keys s3ferry adds, and ``user_metadata`` strips them when
comparing a copy with its source.
"""

from __future__ import annotations

from collections.abc import Mapping

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
