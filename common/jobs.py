"""The job message: what the dispatcher puts on SQS and a worker executes.

Versioned JSON, validated strictly. A message that fails validation is never retried: the
worker moves it to the dead-letter queue with a ``reason`` attribute naming what was wrong.

    {"v": 1, "kind": "copy", "id": "…", "route": "default",
     "source": {"endpoint": "global", "bucket": "src", "key": "a/b.txt",
                "version_id": null, "size": 123, "etag": "\"…\"", "storage_class": "STANDARD"},
     "destination": {"endpoint": "china", "bucket": "dst", "key": "a/b.txt",
                     "storage_class": null, "kms_key_id": null},
     "options": {"preserve_tags": true, "sequencer": null}}

Many small jobs may share one message, a *bundle*: one SQS call, one lease and one ack for up
to ``MAX_BUNDLE_JOBS`` objects. Each entry of ``jobs`` is a whole job message of its own, so
one that fails goes to the dead-letter queue (or back onto the queue) alone, as a single job;
``attempts`` counts the receives its jobs had before they were put back in a new bundle, and
the optional ``limit`` is the most jobs the sender puts in one bundle (its bundles grow up to
it), so a worker can leave room for that many before it has seen one::

    {"v": 1, "kind": "bundle", "id": "…", "attempts": 0, "limit": 100,
     "jobs": [{"v": 1, "kind": "copy", …}, …]}

Bundles were added within v1: workers that predate them dead-letter them (``invalid_job``),
so upgrade workers before dispatchers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import BadMessage
from common.limits import KIB, MAX_KEY_BYTES

SCHEMA_VERSION = 1
MAX_JOB_BYTES = 32 * KIB
MAX_BUNDLE_JOBS = 500
# A bundle stays well under SQS's 256 KiB so a few fit in one SendMessageBatch (whose total
# is capped at 256 KiB too).
MAX_BUNDLE_BYTES = 64 * KIB

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
    # ``backfill --compare content``: a destination that looks copied is trusted only once its
    # bytes, read back, have the source's checksum; otherwise it is copied again. Added
    # within v1 (upgrade workers before dispatchers).
    verify_content: bool = False


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


@dataclass(frozen=True)
class Bundle:
    """Several jobs in one message. ``jobs`` are left as parsed JSON: each is validated on
    its own (:func:`decode_item`), so one bad entry does not sink the others."""

    id: str
    attempts: int
    jobs: tuple[Any, ...]
    limit: int | None = None  # the most jobs its sender puts in a bundle


def encode_bundle(bodies: Sequence[str], *, bundle_id: str | None = None,
                  attempts: int = 0, limit: int | None = None) -> str:
    """One message from already encoded jobs (as :func:`encode` wrote them)."""
    if not 1 <= len(bodies) <= MAX_BUNDLE_JOBS:
        raise ValueError(f"a bundle holds 1 to {MAX_BUNDLE_JOBS} jobs, not {len(bodies)}")
    envelope: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": "bundle",
                                "id": bundle_id or uuid.uuid4().hex, "attempts": attempts}
    if limit is not None:
        envelope["limit"] = limit
    head = json.dumps(envelope)
    return head[:-1] + ', "jobs": [' + ", ".join(bodies) + "]}"


def item_body(item: Any) -> str:
    """One bundle entry as a message of its own (for the dead-letter queue or a new bundle)."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def decode(body: str) -> CopyJob | DeleteJob | Bundle:
    """Parse and validate a message body; raise :class:`BadMessage` with a reason, never more."""
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BUNDLE_BYTES:
        raise BadMessage(f"message is larger than {MAX_BUNDLE_BYTES} bytes", reason="oversized")
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadMessage(f"message is not JSON: {exc}", reason="not_json") from exc
    if isinstance(data, dict) and data.get("kind") == "bundle":
        _check_version(data)
        return _bundle(data)
    if size > MAX_JOB_BYTES:
        raise BadMessage(f"job is larger than {MAX_JOB_BYTES} bytes", reason="oversized")
    return decode_item(data)


def jobs_of(body: str) -> list[CopyJob | DeleteJob]:
    """Every job a message carries (one, or a bundle's); :class:`BadMessage` on any bad one."""
    message = decode(body)
    if isinstance(message, Bundle):
        return [decode_item(item) for item in message.jobs]
    return [message]


def decode_item(data: Any) -> CopyJob | DeleteJob:
    """Validate one parsed job (a whole message, or one entry of a bundle)."""
    if not isinstance(data, dict):
        raise BadMessage("message is not a JSON object", reason="not_an_object")
    _check_version(data)
    try:
        return _Envelope.model_validate({"job": data}).job
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "job"
        raise BadMessage(f"invalid job: {where}: {first['msg']}",
                         reason="invalid_job") from exc


def _check_version(data: dict[str, Any]) -> None:
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise BadMessage(f"unknown schema version {version!r} (this worker reads "
                         f"{SCHEMA_VERSION})", reason="unknown_version")


def _bundle(data: dict[str, Any]) -> Bundle:
    extra = sorted(set(data) - {"v", "kind", "id", "attempts", "limit", "jobs"})
    bundle_id, attempts, jobs = data.get("id"), data.get("attempts", 0), data.get("jobs")
    limit = data.get("limit")
    if extra:
        problem = f"unknown field(s) {', '.join(extra)}"
    elif not isinstance(bundle_id, str) or not 1 <= len(bundle_id) <= 128:
        problem = "id must be a string of 1 to 128 characters"
    elif type(attempts) is not int or attempts < 0:
        problem = "attempts must be a whole number >= 0"
    elif limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_BUNDLE_JOBS):
        problem = f"limit must be a whole number from 1 to {MAX_BUNDLE_JOBS}"
    elif not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_BUNDLE_JOBS:
        problem = f"jobs must be a list of 1 to {MAX_BUNDLE_JOBS} jobs"
    else:
        return Bundle(id=bundle_id, attempts=attempts, jobs=tuple(jobs), limit=limit)
    raise BadMessage(f"invalid bundle: {problem}", reason="invalid_job")
