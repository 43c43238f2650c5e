"""From a source object (or a vanished one) to the jobs for each destination of its route.

Every destination gets its own job, so each is retried, dead-lettered and counted on its own.
"""

from __future__ import annotations

from pydantic import ValidationError

from common.jobs import CopyJob, CopyOptions, DeleteJob, DestinationRef, SourceRef
from common.routes import DestinationSpec, Route


class Unmappable(ValueError):
    """The destination key is not a valid S3 key (e.g. longer than 1,024 bytes)."""


def _destination(dest: DestinationSpec, key: str) -> DestinationRef:
    try:
        return DestinationRef(endpoint=dest.endpoint, bucket=dest.bucket, key=key,
                              storage_class=dest.storage_class, kms_key_id=dest.kms_key_id)
    except ValidationError as exc:
        raise Unmappable(f"{dest.label}: {exc.errors()[0]['msg']}") from exc


def copy_job(route: Route, dest: DestinationSpec, *, relative_key: str, size: int | None,
             etag: str | None, version_id: str | None = None,
             sequencer: str | None = None, destination_absent: bool = False,
             storage_class: str | None = None, verify_content: bool = False) -> CopyJob:
    """One copy of ``<source.prefix><relative_key>`` to ``<dest.prefix><relative_key>``.

    ``destination_absent``: the listing saw no destination object, so the worker's first
    attempt may skip its HEAD. ``storage_class``: the source's, as listed.
    ``verify_content``: the worker reads the destination back before trusting it.
    """
    source = SourceRef(endpoint=route.source.endpoint, bucket=route.source.bucket,
                       key=route.source.prefix + relative_key, version_id=version_id,
                       size=size, etag=etag or None, storage_class=storage_class or None)
    return CopyJob(route=route.name or "default", source=source,
                   destination=_destination(dest, dest.prefix + relative_key),
                   options=CopyOptions(sequencer=sequencer,
                                       destination_absent=destination_absent,
                                       verify_content=verify_content))


def delete_job(route: Route, dest: DestinationSpec, *, relative_key: str,
               sequencer: str | None = None) -> DeleteJob:
    """Delete ``<dest.prefix><relative_key>``: by construction never outside the prefix."""
    if not relative_key:
        raise Unmappable("refusing to delete the destination prefix itself")
    return DeleteJob(route=route.name or "default",
                     destination=_destination(dest, dest.prefix + relative_key),
                     sequencer=sequencer)
