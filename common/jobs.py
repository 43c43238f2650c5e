"""The job message: what the dispatcher puts on SQS and a worker executes.

Versioned JSON, validated strictly. A message that fails validation is never retried: the
worker moves it to the dead-letter queue with a ``reason`` attribute naming what was wrong.

    {"v": 1, "kind": "copy", "id": "…", "route": "default",
     "source": {"endpoint": "global", "bucket": "src", "key": "a/b.txt",
                "version_id": null, "size": 123, "etag": "\"…\"", "storage_class": "STANDARD"},
     "destination": {"endpoint": "china", "bucket": "dst", "key": "a/b.txt",
                     "storage_class": null, "kms_key_id": null},
     "options": {"preserve_tags": true, "sequencer": null}}
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import BadMessage
from common.limits import MAX_KEY_BYTES

SCHEMA_VERSION = 1
MAX_JOB_BYTES = 32 * 1024

_STRICT = ConfigDict(frozen=True, extra="forbid")


def _check_key(key: str) -> str:
    size = len(key.encode("utf-8"))
    if size == 0:
        raise ValueError("key is empty")
    if size > MAX_KEY_BYTES:
        raise ValueError(f"key is {size} bytes, more than S3's {MAX_KEY_BYTES}")
    return key


class SourceRef(BaseModel):
    """The object to read, pinned to what the dispatcher saw (ETag, version)."""

    model_config = _STRICT
    endpoint: str = Field(min_length=1)
    bucket: str = Field(min_length=3, max_length=63)
    key: str
    version_id: str | None = None
    size: int | None = Field(default=None, ge=0)
    etag: str | None = None
    # The storage class the listing reported; lets a same-endpoint copy keep it without a HEAD.
    # Added within v1: workers that predate it reject it (extra=forbid), so upgrade workers
    # before dispatchers.
    storage_class: str | None = Field(default=None, min_length=1, max_length=64)

    _key = field_validator("key")(_check_key)


class DestinationRef(BaseModel):
    """Where the copy goes, with per-destination storage class and KMS key."""

    model_config = _STRICT
    endpoint: str = Field(min_length=1)
    bucket: str = Field(min_length=3, max_length=63)
    key: str
    storage_class: str | None = None
    kms_key_id: str | None = None

    _key = field_validator("key")(_check_key)


class CopyOptions(BaseModel):
    model_config = _STRICT
    preserve_tags: bool = True
    preserve_metadata: bool = True
    sequencer: str | None = None
    # The dispatcher's listing saw no destination object: a first attempt need not HEAD it
    # (a redelivery always does, so a retried copy is still skipped when already done).
    destination_absent: bool = False


class CopyJob(BaseModel):
    model_config = _STRICT
    v: Literal[1] = 1
    kind: Literal["copy"] = "copy"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    route: str = Field(default="default", min_length=1, max_length=128)
    source: SourceRef
    destination: DestinationRef
    options: CopyOptions = CopyOptions()


class DeleteJob(BaseModel):
    """Remove a destination object whose source was deleted (opt-in per route)."""

    model_config = _STRICT
    v: Literal[1] = 1
    kind: Literal["delete"] = "delete"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    route: str = Field(default="default", min_length=1, max_length=128)
    destination: DestinationRef
    sequencer: str | None = None


Job = Annotated[CopyJob | DeleteJob, Field(discriminator="kind")]


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)
    job: Job


def encode(job: CopyJob | DeleteJob) -> str:
    """Serialise a job; the result always decodes back to an equal job."""
    body = job.model_dump_json(exclude_none=True)
    if len(body.encode("utf-8")) > MAX_JOB_BYTES:
        raise BadMessage(f"job is larger than {MAX_JOB_BYTES} bytes", reason="oversized")
    return body


def decode(body: str) -> CopyJob | DeleteJob:
    """Parse and validate a message body; raise :class:`BadMessage` with a reason, never more."""
    if len(body.encode("utf-8", "surrogatepass")) > MAX_JOB_BYTES:
        raise BadMessage(f"message is larger than {MAX_JOB_BYTES} bytes", reason="oversized")
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadMessage(f"message is not JSON: {exc}", reason="not_json") from exc
    if not isinstance(data, dict):
        raise BadMessage("message is not a JSON object", reason="not_an_object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise BadMessage(f"unknown schema version {version!r} (this worker reads "
                         f"{SCHEMA_VERSION})", reason="unknown_version")
    try:
        return _Envelope.model_validate({"job": data}).job
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "job"
        raise BadMessage(f"invalid job: {where}: {first['msg']}",
                         reason="invalid_job") from exc
