"""S3 events in every envelope become the right jobs, in sequencer order, or a DLQ reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.jobs import Bundle, CopyJob, DeleteJob, decode, jobs_of
from common.metrics import DispatcherMetrics
from common.retry import RetryPolicy
from common.routes import Route
from dispatcher.events import BadEvent, Kind, SequencerBook, decode_key, parse
from dispatcher.listener import EVENT_BUNDLE_JOBS, Listener, ListenerSettings

pytestmark = pytest.mark.timeout(30)

ROUTE = Route.model_validate({
    "name": "r1", "source": {"endpoint": "global", "bucket": "src", "prefix": "in/"},
    "destinations": [{"endpoint": "china", "bucket": "dst-cn", "prefix": "out/"},
                     {"endpoint": "rclone", "bucket": "dst-rc"}],
    "exclude": ["*.tmp"], "sync_deletes": True})
NO_DELETES = ROUTE.model_copy(update={"name": "r2", "sync_deletes": False})


def record(name: str, key: str, *, seq: str = "0A", size: int | None = 3,
           version: str | None = None, bucket: str = "src") -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "sequencer": seq, "eTag": "abc"}
    if size is not None:
        obj["size"] = size
    if version is not None:
        obj["versionId"] = version
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
            "eventTime": "2026-01-01T00:00:00.000Z",
            "s3": {"bucket": {"name": bucket}, "object": obj}}


def direct(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def sns(body: str) -> str:
    return json.dumps({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:t",
                       "Message": body})


def eventbridge(detail_type: str, key: str, *, seq: str = "0A", reason: str = "PutObject",
                deletion: str | None = None, version: str | None = None) -> str:
    obj: dict[str, Any] = {"key": key, "size": 3, "etag": "abc", "sequencer": seq}
    if version:
        obj["version-id"] = version
    detail: dict[str, Any] = {"version": "0", "bucket": {"name": "src"}, "object": obj,
                              "reason": reason}
    if deletion:
        detail["deletion-type"] = deletion
    return json.dumps({"version": "0", "id": "x", "detail-type": detail_type,
                       "source": "aws.s3", "time": "2026-01-01T00:00:00Z", "detail": detail})


@pytest.mark.parametrize(("raw", "key"), [
    ("in/red+flower.jpg", "in/red flower.jpg"),
    ("in/red%20flower.jpg", "in/red flower.jpg"),
    ("in/c%2B%2B.txt", "in/c++.txt"),
    ("in/%E4%B8%AD%E6%96%87.txt", "in/\u4e2d\u6587.txt"),
    ("in/a%3Db%26c.txt", "in/a=b&c.txt"),
])
def test_keys_are_url_decoded(raw: str, key: str) -> None:
    assert decode_key(raw) == key


@pytest.mark.parametrize("wrap", [lambda b: b, sns], ids=["direct", "sns"])
def test_direct_and_sns_envelopes_parse_the_same(wrap: Any) -> None:
    body = direct(record("ObjectCreated:Put", "in/a+b.txt", seq="1F"),
                  record("ObjectRemoved:DeleteMarkerCreated", "in/c", version="v2"))
    events = parse(wrap(body))
    assert [(e.kind, e.key, e.sequencer, e.delete_marker) for e in events] == [
        (Kind.CREATED, "in/a b.txt", "1F", False), (Kind.REMOVED, "in/c", "0A", True)]
    assert events[0].size == 3 and events[0].time is not None


def test_eventbridge_envelope() -> None:
    created = parse(eventbridge("Object Created", "in/x%2By"))[0]
    marker = parse(eventbridge("Object Deleted", "in/x", reason="DeleteObject",
                               deletion="Delete Marker Created", version="v"))[0]
    permanent = parse(eventbridge("Object Deleted", "in/x", reason="DeleteObject",
                                  deletion="Permanently Deleted", version="v"))[0]
    assert (created.kind, created.key, created.size) == (Kind.CREATED, "in/x+y", 3)
    assert marker.kind is Kind.REMOVED and marker.delete_marker
    assert permanent.permanent_version_delete and not marker.permanent_version_delete
    assert parse(eventbridge("Object Restore Completed", "in/x"))[0].kind is Kind.IGNORED


@pytest.mark.parametrize("wrap", [lambda b: b, sns], ids=["direct", "sns"])
def test_test_event_is_recognised(wrap: Any) -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "src"})
    assert [e.kind for e in parse(wrap(body))] == [Kind.TEST]


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "not_json"),
    ("[1, 2]", "unknown_envelope"),
    ('{"hello": "world"}', "unknown_envelope"),
    (sns(sns(direct(record("ObjectCreated:Put", "in/a")))), "unknown_envelope"),
    (direct({"eventName": "ObjectCreated:Put"}), "invalid_event"),
    (direct(record("ObjectCreated:Put", "")), "invalid_event"),
    (direct(record("ObjectCreated:Put", "in/a", bucket="")), "invalid_event"),
    (direct(record("ObjectCreated:Put", "k" * 1100)), "invalid_event"),
])
def test_unparseable_messages_name_a_reason(body: str, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse(body)
    assert info.value.reason == reason


def test_sequencers_compare_after_left_padding() -> None:
    book = SequencerBook(capacity=2)
    book.applied("b", "k", "FF")
    assert book.is_stale("b", "k", "0FF") and book.is_stale("b", "k", "FE")
    assert not book.is_stale("b", "k", "100")  # longer hex is newer, though "1" < "F"
    book.applied("b", "k2", "1")
    book.applied("b", "k3", "1")  # capacity 2: k is forgotten, never blocks again
    assert not book.is_stale("b", "k", "01")


# -- the listener with a fake SQS ------------------------------------------------------------

class FakeSqs:
    def __init__(self) -> None:
        self.sent: list[CopyJob | DeleteJob] = []
        self.bodies: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.fail_sends = False

    async def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]
                                 ) -> dict[str, Any]:
        if self.fail_sends:
            return {"Successful": [], "Failed": [
                {"Id": e["Id"], "Code": "InternalError", "SenderFault": False}
                for e in Entries]}
        self.sent.extend(j for e in Entries for j in jobs_of(e["MessageBody"]))
        self.bodies.extend(e["MessageBody"] for e in Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    async def send_message(self, *, QueueUrl: str, MessageBody: str,
                           MessageAttributes: dict[str, Any]) -> dict[str, Any]:
        self.dead.append((MessageBody, MessageAttributes["reason"]["StringValue"]))
        return {}

    async def delete_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]
                                   ) -> dict[str, Any]:
        self.deleted.extend(e["ReceiptHandle"] for e in Entries)
        return {"Successful": Entries}


class FakeS3:
    def __init__(self, current: dict[str, dict[str, Any]]) -> None:
        self.current = current

    async def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.current:
            raise _NotFound()
        return self.current[Key]


class _NotFound(Exception):
    response = {"Error": {"Code": "404"}}


class FakeClients:
    def __init__(self, s3: FakeS3) -> None:
        self.s3 = s3

    async def get(self, name: str, service: str = "s3") -> Any:
        return self.s3


def listener(sqs: FakeSqs, routes: list[Route] | None = None,
             current: dict[str, dict[str, Any]] | None = None,
             send_policy: RetryPolicy | None = None) -> Listener:
    settings = ListenerSettings(events_queue_url="q", dlq_url="dlq", job_queue_url="jobs")
    return Listener(sqs=sqs, clients=FakeClients(FakeS3(current or {})),
                    routes=routes or [ROUTE], settings=settings, metrics=DispatcherMetrics(),
                    send_policy=send_policy)


def messages(*bodies: str) -> list[dict[str, Any]]:
    return [{"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": b}
            for i, b in enumerate(bodies)]


def targets(jobs: list[CopyJob | DeleteJob]) -> list[tuple[str, str, str, str | None]]:
    out = []
    for job in jobs:
        seq = job.options.sequencer if isinstance(job, CopyJob) else job.sequencer
        out.append((job.kind, job.destination.bucket, job.destination.key, seq))
    return sorted(out)


@pytest.mark.parametrize("envelope", ["direct", "sns", "eventbridge"])
async def test_created_event_fans_out_to_every_destination(envelope: str) -> None:
    body = {"direct": direct(record("ObjectCreated:Put", "in/sub/a+b.txt", seq="2A")),
            "sns": sns(direct(record("ObjectCreated:Put", "in/sub/a+b.txt", seq="2A"))),
            "eventbridge": eventbridge("Object Created", "in/sub/a+b.txt", seq="2A")}[envelope]
    sqs = FakeSqs()
    await listener(sqs).handle_batch(messages(body))
    assert targets(sqs.sent) == [("copy", "dst-cn", "out/sub/a b.txt", "2A"),
                                 ("copy", "dst-rc", "sub/a b.txt", "2A")]
    assert isinstance(sqs.sent[0], CopyJob)
    assert sqs.sent[0].source.key == "in/sub/a b.txt" and sqs.sent[0].route == "r1"
    assert sqs.deleted == ["r0"]


async def test_test_event_filtered_and_foreign_keys_enqueue_nothing() -> None:
    sqs = FakeSqs()
    lst = listener(sqs)
    await lst.handle_batch(messages(
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "src"}),
        direct(record("ObjectCreated:Put", "in/scratch.tmp")),
        direct(record("ObjectCreated:Put", "elsewhere/a")),
        direct(record("ObjectCreated:Put", "in/a", bucket="other-bucket"))))
    assert sqs.sent == [] and sqs.dead == []
    assert sorted(sqs.deleted) == ["r0", "r1", "r2", "r3"]
    assert lst.summary.events["test"] == 1 and lst.summary.dropped["no_route"] == 3


async def test_stale_events_are_dropped_and_counted_within_and_across_batches() -> None:
    sqs = FakeSqs()
    lst = listener(sqs)
    # One batch, out of order: the delete (newer) wins, the older create is dropped.
    await lst.handle_batch(messages(
        direct(record("ObjectRemoved:Delete", "in/k", seq="00B0")),
        direct(record("ObjectCreated:Put", "in/k", seq="A0"))))
    # A later batch delivers an even older event, and a duplicate of the applied one.
    await lst.handle_batch(messages(direct(record("ObjectCreated:Put", "in/k", seq="9F")),
                                    direct(record("ObjectRemoved:Delete", "in/k", seq="B0"))))
    assert targets(sqs.sent) == [("copy", "dst-cn", "out/k", "A0"),
                                 ("copy", "dst-rc", "k", "A0"),
                                 ("delete", "dst-cn", "out/k", "00B0"),
                                 ("delete", "dst-rc", "k", "00B0")]
    assert lst.summary.dropped["stale"] == 2
    assert len(sqs.deleted) == 4


async def test_in_one_batch_older_events_are_applied_first() -> None:
    sqs = FakeSqs()
    await listener(sqs).handle_batch(messages(
        direct(record("ObjectCreated:Put", "in/k", seq="C0")),
        direct(record("ObjectCreated:Put", "in/k", seq="B0"))))
    # Both are sent (the worker keeps the newest); the newest is sent last.
    assert [j.options.sequencer for j in sqs.sent if isinstance(j, CopyJob)] == [
        "B0", "B0", "C0", "C0"]


async def test_deletes_only_for_routes_that_sync_them() -> None:
    sqs = FakeSqs()
    lst = listener(sqs, routes=[NO_DELETES])
    await lst.handle_batch(messages(direct(record("ObjectRemoved:Delete", "in/k"))))
    assert sqs.sent == [] and lst.summary.dropped["deletes_not_synced"] == 1


async def test_delete_marker_deletes_and_permanent_version_delete_checks_the_source() -> None:
    sqs = FakeSqs()
    current = {"in/restored": {"ContentLength": 7, "ETag": '"older"'}}
    await listener(sqs, current=current).handle_batch(messages(
        direct(record("ObjectRemoved:DeleteMarkerCreated", "in/marked", version="m1",
                      seq="10")),
        direct(record("ObjectRemoved:Delete", "in/restored", version="v3", seq="11")),
        direct(record("ObjectRemoved:Delete", "in/gone", version="v9", seq="12"))))
    assert targets(sqs.sent) == [
        ("copy", "dst-cn", "out/restored", "11"), ("copy", "dst-rc", "restored", "11"),
        ("delete", "dst-cn", "out/gone", "12"), ("delete", "dst-cn", "out/marked", "10"),
        ("delete", "dst-rc", "gone", "12"), ("delete", "dst-rc", "marked", "10")]
    copy = next(j for j in sqs.sent if isinstance(j, CopyJob))
    assert (copy.source.size, copy.source.etag) == (7, "older")


async def test_unparseable_message_goes_to_the_dlq_and_the_rest_proceeds() -> None:
    sqs = FakeSqs()
    await listener(sqs).handle_batch(messages(
        "garbage", direct(record("ObjectCreated:Put", "in/ok"))))
    assert sqs.dead == [("garbage", "not_json")]
    assert len(sqs.sent) == 2 and sorted(sqs.deleted) == ["r0", "r1"]


async def test_failed_send_acknowledges_nothing_and_remembers_nothing() -> None:
    sqs = FakeSqs()
    lst = listener(sqs, send_policy=RetryPolicy(attempts=2, max_seconds=1, base_delay=0.001))
    sqs.fail_sends = True
    body = direct(record("ObjectCreated:Put", "in/k", seq="50"))
    await lst.handle_batch(messages(body))
    assert sqs.deleted == [] and sqs.sent == []
    sqs.fail_sends = False
    await lst.handle_batch(messages(body))  # redelivered: not taken for a stale duplicate
    assert len(sqs.sent) == 2 and sqs.deleted == ["r0"]


def test_equal_sequencer_drops_a_duplicate_but_not_another_change() -> None:
    """LocalStack (and some stores) send one constant sequencer: a later, different change
    of the key must still be applied; a redelivery of the same event must not."""
    book = SequencerBook()
    created = ("ObjectCreated:Put", "etag-1", 10, None, False)
    book.applied("b", "k", "0055", created)
    assert book.is_stale("b", "k", "0055", created)  # duplicate delivery
    removed = ("ObjectRemoved:Delete", None, None, None, False)
    assert not book.is_stale("b", "k", "0055", removed)
    book.applied("b", "k", "0055", removed)
    recreated = ("ObjectCreated:Put", "etag-2", 12, None, False)
    assert not book.is_stale("b", "k", "0055", recreated)
    assert book.is_stale("b", "k", "0054", recreated)  # older is always stale


async def test_the_jobs_of_a_batch_of_events_go_in_small_bundles_that_say_so() -> None:
    sqs = FakeSqs()
    keys = [f"in/k{i}" for i in range(10)]

    await listener(sqs).handle_batch(messages(
        *(direct(record("ObjectCreated:Put", k, seq=f"{i + 1:02X}")) for i, k in enumerate(keys))))

    assert len(sqs.sent) == 20  # 10 events x 2 destinations
    bundles = [decode(body) for body in sqs.bodies]
    assert all(isinstance(b, Bundle) and b.limit == EVENT_BUNDLE_JOBS for b in bundles)
    assert [len(b.jobs) for b in bundles] == [1, 2, 4, 8, 5]  # type: ignore[union-attr]
