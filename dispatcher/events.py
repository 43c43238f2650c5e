"""Continuous mode: S3 event notifications in, copy and delete jobs out.

Envelopes accepted on the events queue (what S3 deployments produce in practice)::

    S3 -> SQS           {"Records": [{"eventName": "ObjectCreated:Put", "s3": {...}}]}
    S3 -> SNS -> SQS    {"Type": "Notification", "Message": "<the S3 JSON above>"}
    EventBridge -> SQS  {"source": "aws.s3", "detail-type": "Object Created", "detail": {...}}

``s3:TestEvent`` (sent when notifications are configured) is acknowledged and ignored. Keys are
URL-encoded in notifications (``+`` or ``%20`` for a space, ``%2B`` for a plus):
:func:`decode_key` undoes that with ``unquote_plus``.

Semantics, per matching route and destination:

* ObjectCreated -> a copy job carrying the event's ``sequencer``; the worker refuses to
  overwrite a destination written from a newer event.
* Delete marker created (versioned bucket), or a delete on an unversioned bucket -> a delete
  job, if the route has ``sync_deletes``.
* Permanent delete of one version (versioned bucket) -> the source's current state decides:
  if a version is still current (an older one, or the deleted version was not the latest) it
  is copied, otherwise the destination is deleted (``sync_deletes`` only).

Ordering: S3 delivers at least once and unordered. Events are applied per key in sequencer
order: one older than (or equal to) one already applied for that key is dropped and counted.
The memory of applied sequencers is bounded (LRU); the worker's check against the sequencer
stored on the destination covers what it forgot. A message whose jobs could not all be sent
stays on the queue and comes back; an unparseable message goes to the dead-letter queue with
a ``reason`` attribute and the dispatcher carries on.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from common.fingerprint import sequencer_key
from common.jobs import CopyJob, DeleteJob
from common.limits import MAX_KEY_BYTES
from common.routes import Route
from dispatcher.fanout import Unmappable, copy_job, delete_job


class Kind(StrEnum):
    CREATED = "created"
    REMOVED = "removed"
    TEST = "test"
    IGNORED = "ignored"  # restores, tagging, ACL, replication, transitions: nothing to copy


class BadEvent(ValueError):
    """A message that is not an S3 event we understand; goes to the DLQ with ``reason``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Event:
    kind: Kind
    name: str
    bucket: str = ""
    key: str = ""
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    time: datetime | None = None
    delete_marker: bool = False

    @property
    def identity(self) -> tuple[object, ...]:
        """What tells a duplicate delivery from another change under an equal sequencer."""
        return (self.name, self.etag, self.size, self.version_id, self.delete_marker)

    @property
    def permanent_version_delete(self) -> bool:
        """A specific version removed for good (not a delete marker, not unversioned)."""
        return (self.kind is Kind.REMOVED and not self.delete_marker
                and self.version_id not in (None, "", "null"))


# -- parsing (pure) --------------------------------------------------------------------------

def decode_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise BadEvent("object key missing", reason="invalid_event")
    key = unquote_plus(raw)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadEvent("object key longer than 1,024 bytes", reason="invalid_event")
    return key


def _time(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def _kind(name: str) -> tuple[Kind, bool]:
    """(kind, delete_marker) for an S3 notification event name."""
    name = name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        return Kind.CREATED, False
    if name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
        return Kind.REMOVED, name.endswith("DeleteMarkerCreated")
    return Kind.IGNORED, False


def _size(raw: Any) -> int | None:
    return raw if isinstance(raw, int) and raw >= 0 else None


def _record(record: Any) -> S3Event:
    if not isinstance(record, dict) or not isinstance(record.get("s3"), dict):
        raise BadEvent("record without an s3 section", reason="invalid_event")
    name = str(record.get("eventName", ""))
    kind, marker = _kind(name)
    s3 = record["s3"]
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    if not isinstance(bucket, str) or not bucket:
        raise BadEvent("record without a bucket name", reason="invalid_event")
    return S3Event(kind=kind, name=name, bucket=bucket, key=decode_key(obj.get("key")),
                   size=_size(obj.get("size")), etag=obj.get("eTag") or None,
                   version_id=obj.get("versionId") or None,
                   sequencer=obj.get("sequencer") or None,
                   time=_time(record.get("eventTime")), delete_marker=marker)


_EVENTBRIDGE_TYPES = {"Object Created": Kind.CREATED, "Object Deleted": Kind.REMOVED}


def _eventbridge(data: dict[str, Any]) -> S3Event:
    detail = data.get("detail")
    if not isinstance(detail, dict):
        raise BadEvent("EventBridge event without detail", reason="invalid_event")
    detail_type = str(data.get("detail-type", ""))
    kind = _EVENTBRIDGE_TYPES.get(detail_type, Kind.IGNORED)
    bucket = (detail.get("bucket") or {}).get("name")
    obj = detail.get("object") or {}
    if kind is Kind.IGNORED:
        return S3Event(kind=kind, name=detail_type)
    if not isinstance(bucket, str) or not bucket:
        raise BadEvent("EventBridge event without a bucket name", reason="invalid_event")
    marker = detail.get("deletion-type") == "Delete Marker Created"
    return S3Event(kind=kind, name=f"{detail_type}:{detail.get('reason', '')}", bucket=bucket,
                   key=decode_key(obj.get("key")), size=_size(obj.get("size")),
                   etag=obj.get("etag") or None, version_id=obj.get("version-id") or None,
                   sequencer=obj.get("sequencer") or None, time=_time(data.get("time")),
                   delete_marker=marker)


def parse(body: str, *, _depth: int = 0) -> list[S3Event]:
    """Every S3 event in one SQS message body, whatever the envelope; raise BadEvent."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise BadEvent(f"message is not JSON: {exc}", reason="not_json") from exc
    if not isinstance(data, dict):
        raise BadEvent("message is not a JSON object", reason="unknown_envelope")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        if _depth:
            raise BadEvent("SNS envelope inside an SNS envelope", reason="unknown_envelope")
        return parse(data["Message"], _depth=1)
    if data.get("Event") == "s3:TestEvent":
        return [S3Event(kind=Kind.TEST, name="s3:TestEvent", bucket=str(data.get("Bucket", "")))]
    if data.get("source") == "aws.s3" and "detail-type" in data:
        return [_eventbridge(data)]
    records = data.get("Records")
    if isinstance(records, list) and records:
        return [_record(r) for r in records]
    raise BadEvent("not an S3 event notification (direct, SNS or EventBridge)",
                   reason="unknown_envelope")


# -- ordering -------------------------------------------------------------------------------

class SequencerBook:
    """The newest sequencer applied per (bucket, key), bounded (least recently used goes).

    An older sequencer is stale. An equal one is stale only for the same change (a duplicate
    delivery): stores that send a constant or coarse sequencer (LocalStack does) must not
    make every later change of a key look old.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], tuple[str, object]] = OrderedDict()

    def is_stale(self, bucket: str, key: str, sequencer: str | None,
                 identity: object = None) -> bool:
        if sequencer is None:
            return False
        applied = self._seen.get((bucket, key))
        if applied is None:
            return False
        mine, theirs = sequencer_key(sequencer), sequencer_key(applied[0])
        return mine < theirs or (mine == theirs and identity == applied[1])

    def applied(self, bucket: str, key: str, sequencer: str | None,
                identity: object = None) -> None:
        if sequencer is None:
            return
        where = (bucket, key)
        current = self._seen.get(where)
        if current is None or sequencer_key(sequencer) >= sequencer_key(current[0]):
            self._seen[where] = (sequencer, identity)
        self._seen.move_to_end(where)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


def in_sequencer_order(events: Iterable[S3Event]) -> list[S3Event]:
    """Events of one receive batch, oldest first per key (others keep their order)."""
    return sorted(events, key=lambda e: (e.bucket, e.key,
                                         sequencer_key(e.sequencer or "")))


# -- from events to jobs ----------------------------------------------------------------------

SourceHead = Callable[[Route, str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, kw_only=True)
class Planned:
    """The jobs for one event and why (``reason`` names a drop or skip)."""

    jobs: tuple[CopyJob | DeleteJob, ...] = ()
    reason: str = ""


def matching_routes(routes: Iterable[Route], event: S3Event,
                    endpoints: frozenset[str] | None = None) -> list[Route]:
    size = event.size if event.kind is Kind.CREATED else None
    return [r for r in routes if r.source.bucket == event.bucket
            and (endpoints is None or r.source.endpoint in endpoints)
            and r.accepts(event.key, size=size, last_modified=event.time)]


def copies(route: Route, event: S3Event, *, size: int | None,
           etag: str | None) -> list[CopyJob | DeleteJob]:
    rel = route.relative(event.key) or ""
    return [copy_job(route, dest, relative_key=rel, size=size, etag=etag,
                     sequencer=event.sequencer) for dest in route.destinations]


def deletes(route: Route, event: S3Event) -> list[CopyJob | DeleteJob]:
    rel = route.relative(event.key) or ""
    return [delete_job(route, dest, relative_key=rel, sequencer=event.sequencer)
            for dest in route.destinations]


async def plan_event(route: Route, event: S3Event, head: SourceHead) -> Planned:
    """The jobs one event asks of one route (I/O only for a permanent version delete)."""
    try:
        if event.kind is Kind.CREATED:
            return Planned(jobs=tuple(copies(route, event, size=event.size, etag=event.etag)))
        if event.permanent_version_delete:
            current = await head(route, event.key)
            if current is not None:
                return Planned(jobs=tuple(copies(
                    route, event, size=current.get("ContentLength"),
                    etag=str(current.get("ETag", "")).strip('"') or None)))
        if not route.sync_deletes:
            return Planned(reason="deletes_not_synced")
        return Planned(jobs=tuple(deletes(route, event)))
    except Unmappable:
        return Planned(reason="unmappable")
