"""What a destination object is written with: headers, user metadata, tags, class, SSE.

Pure: from the source's HEAD, the job and the destination endpoint to the keyword arguments
shared by PutObject, CreateMultipartUpload and CopyObject (MetadataDirective=REPLACE);
or, for a same-endpoint copy made without a HEAD, the CopyObject arguments that let the
store carry headers, metadata and tags over itself (``direct_copy_args``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from common.fingerprint import fingerprint
from common.jobs import CopyJob
from common.settings import Endpoint
from worker.source import SourceObject


def storage_class_for(source_class: str | None, job: CopyJob, endpoint: Endpoint) -> str | None:
    """Job's explicit class, else the endpoint's mapping of the source's, else the source's."""
    if job.destination.storage_class:
        return job.destination.storage_class
    current = source_class or "STANDARD"
    mapped = endpoint.storage_class_map.get(current, current)
    return None if mapped == "STANDARD" else mapped


def encode_tags(tags: Mapping[str, str]) -> str:
    return urlencode(list(tags.items()))


def write_args(source: SourceObject, job: CopyJob, endpoint: Endpoint, *,
               tags: Mapping[str, str] | None) -> dict[str, Any]:
    """Arguments that make the destination carry the source's metadata and tags."""
    args: dict[str, Any] = {}
    if job.options.preserve_metadata:
        args.update(source.headers)
        metadata = dict(source.metadata)
    else:
        metadata = {}
    metadata.update(fingerprint(etag=source.etag, version_id=source.version_id,
                                sequencer=job.options.sequencer))
    args["Metadata"] = metadata
    if tags:
        args["Tagging"] = encode_tags(tags)
    storage_class = storage_class_for(source.storage_class, job, endpoint)
    if storage_class:
        args["StorageClass"] = storage_class
    args.update(_encryption(job, endpoint))
    return args


def _encryption(job: CopyJob, endpoint: Endpoint) -> dict[str, str]:
    kms = job.destination.kms_key_id or endpoint.kms_key_id
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms} if kms else {}


def direct_copy_args(job: CopyJob, endpoint: Endpoint, *, with_tags: bool) -> dict[str, Any]:
    """CopyObject arguments for a copy within one store, without the source's HEAD.

    The store copies headers and user metadata (and tags, when they are preserved) itself.
    The storage class is not copied by CopyObject, so the listed one is passed (mapped).
    No fingerprint is written: within one store an equal ETag already proves the copy.
    """
    args: dict[str, Any] = {"MetadataDirective": "COPY",
                            "TaggingDirective": "COPY" if with_tags else "REPLACE"}
    storage_class = storage_class_for(job.source.storage_class, job, endpoint)
    if storage_class:
        args["StorageClass"] = storage_class
    args.update(_encryption(job, endpoint))
    return args
