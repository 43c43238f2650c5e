"""Continuous mode end to end: real LocalStack S3 -> SQS notifications on the global partition,
the events listener in process, then a worker until the job queue is drained.

LocalStack's ``sequencer`` is a constant, so each phase (create, then delete) runs its own
listener: within one listener the second event for a key would be (rightly) dropped as not
newer. Ordering by sequencer is covered by the unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.clients import ClientPool
from common.metrics import DispatcherMetrics
from common.settings import Settings, load_settings
from dispatcher.cli import run_listener
from dispatcher.listener import Listener, ListenerSettings, ListenerSummary
from s3ferry.localbed import write_private
from tests.integration.harness import (
    RCLONE_DROPS,
    assert_same_object,
    body,
    dead_letters,
    run_until_idle,
)

pytestmark = pytest.mark.timeout(180)

AWKWARD = ["space name.txt", "plus+sign.txt", "percent%20.txt", "unicode/\u4e2d\u6587.txt",
           "both + and %2B.txt"]


class EventsQueue:
    def __init__(self, url: str, dlq_url: str, arn: str) -> None:
        self.url, self.dlq_url, self.arn = url, dlq_url, arn


@pytest.fixture
def events_queue(sqs_global: Any) -> Iterator[EventsQueue]:
    name = f"s3ferry-events-{uuid.uuid4().hex[:12]}"
    url = sqs_global.create_queue(QueueName=name,
                                  Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    dlq_url = sqs_global.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs_global.get_queue_attributes(
        QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    try:
        yield EventsQueue(url, dlq_url, arn)
    finally:
        for q in (url, dlq_url):
            with contextlib.suppress(Exception):
                sqs_global.delete_queue(QueueUrl=q)


def with_routes(config_path: Path, tmp_path: Path, routes_toml: str) -> Path:
    path = tmp_path / "s3ferry.toml"
    write_private(path, config_path.read_text() + "\n" + routes_toml)
    return path


def depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"])
            + int(attrs["ApproximateNumberOfMessagesNotVisible"]))


async def wait_for_depth(sqs: Any, url: str, n: int, within: float = 30) -> None:
    """Notifications are delivered asynchronously: wait until ``n`` are on the queue."""
    deadline = time.monotonic() + within
    while (seen := depth(sqs, url)) < n:
        assert time.monotonic() < deadline, f"only {seen} of {n} messages arrived on {url}"
        await asyncio.sleep(0.2)


def notify(s3: Any, bucket: str, queue: EventsQueue) -> None:
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": queue.arn,
                                 "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})


def options(queue: EventsQueue, settings: Settings, **kw: Any) -> ListenerSettings:
    assert settings.queue_url
    values: dict[str, Any] = {"wait_time_seconds": 1, "exit_when_idle": True, "idle_polls": 2,
                              "visibility_timeout": 30}
    values.update(kw)
    return ListenerSettings(events_queue_url=queue.url, dlq_url=queue.dlq_url,
                            job_queue_url=settings.queue_url, **values)


async def listen(settings: Settings, queue: EventsQueue) -> ListenerSummary:
    return await run_listener(settings, list(settings.routes.values()),
                              options(queue, settings))


def absent(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}
    return False


async def test_created_events_fan_out_awkward_keys_and_the_test_event_is_ignored(
        config_path: Path, tmp_path: Path, queues: Any, events_queue: EventsQueue,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any],
        sqs_global: Any) -> None:
    src, china, rclone = make_bucket("global"), make_bucket("china"), make_bucket("rclone")
    s3 = s3_clients["global"]
    notify(s3, src, events_queue)  # LocalStack sends an s3:TestEvent now
    config = with_routes(config_path, tmp_path, f"""
[routes.fan]
source = {{ endpoint = "global", bucket = "{src}", prefix = "in/" }}
exclude = ["*.tmp"]

[[routes.fan.destinations]]
endpoint = "china"
bucket = "{china}"
prefix = "cn/in/"

[[routes.fan.destinations]]
endpoint = "rclone"
bucket = "{rclone}"
prefix = "mirror/"
""")
    settings = load_settings(config, queue_url=queues.queue_url, dlq_url=queues.dlq_url)
    for i, key in enumerate(AWKWARD):
        s3.put_object(Bucket=src, Key=f"in/{key}", Body=f"{key} {i}".encode() * (i + 1),
                      ContentType="text/plain", Metadata={"owner": f"user-{i}"})
    s3.put_object(Bucket=src, Key="in/skip.tmp", Body=b"tmp")      # excluded by glob
    s3.put_object(Bucket=src, Key="outside.txt", Body=b"outside")  # no route
    await wait_for_depth(sqs_global, events_queue.url, 1 + len(AWKWARD) + 2)

    summary = await listen(settings, events_queue)
    assert summary.events == {"test": 1, "created": len(AWKWARD) + 2}
    assert summary.jobs == {"copy": 2 * len(AWKWARD)}
    assert summary.dropped == {"no_route": 2}
    worker = await run_until_idle(config, queues)
    assert worker.results["copied"] == 2 * len(AWKWARD)

    for key in AWKWARD:
        assert_same_object(s3, src, s3_clients["china"], china, f"in/{key}", f"cn/in/{key}")
        assert_same_object(s3, src, s3_clients["rclone"], rclone, f"in/{key}", f"mirror/{key}",
                           drops=RCLONE_DROPS)
    assert absent(s3_clients["china"], china, "cn/in/skip.tmp")
    assert dead_letters(sqs_global, queues) == {}
    assert dead_letters(sqs_global, events_queue) == {}  # the TestEvent is not a bad event
    assert depth(sqs_global, events_queue.url) == 0


async def test_removed_events_on_an_unversioned_bucket_delete_only_where_deletes_are_synced(
        config_path: Path, tmp_path: Path, queues: Any, events_queue: EventsQueue,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any],
        sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3, cn = s3_clients["global"], s3_clients["china"]
    notify(s3, src, events_queue)
    config = with_routes(config_path, tmp_path, f"""
[routes.synced]
source = {{ endpoint = "global", bucket = "{src}", prefix = "sync/" }}
sync_deletes = true
destinations = [{{ endpoint = "china", bucket = "{dst}", prefix = "s/" }}]

[routes.kept]
source = {{ endpoint = "global", bucket = "{src}", prefix = "keep/" }}
destinations = [{{ endpoint = "china", bucket = "{dst}", prefix = "k/" }}]
""")
    settings = load_settings(config, queue_url=queues.queue_url, dlq_url=queues.dlq_url)
    s3.put_object(Bucket=src, Key="sync/a b.txt", Body=b"synced")
    s3.put_object(Bucket=src, Key="keep/c+d.txt", Body=b"kept")
    await wait_for_depth(sqs_global, events_queue.url, 3)
    created = await listen(settings, events_queue)
    assert created.jobs == {"copy": 2}
    await run_until_idle(config, queues)
    assert body(cn, dst, "s/a b.txt") == b"synced"
    assert body(cn, dst, "k/c+d.txt") == b"kept"

    s3.delete_object(Bucket=src, Key="sync/a b.txt")
    s3.delete_object(Bucket=src, Key="keep/c+d.txt")
    await wait_for_depth(sqs_global, events_queue.url, 2)
    removed = await listen(settings, events_queue)
    assert removed.events == {"removed": 2}
    assert removed.jobs == {"delete": 1}
    assert removed.dropped == {"deletes_not_synced": 1}
    worker = await run_until_idle(config, queues)
    assert worker.results["deleted"] == 1

    assert absent(cn, dst, "s/a b.txt")
    assert body(cn, dst, "k/c+d.txt") == b"kept"
    assert dead_letters(sqs_global, queues) == {}
    assert dead_letters(sqs_global, events_queue) == {}


async def test_versioned_bucket_delete_marker_deletes_and_version_deletes_follow_the_source(
        config_path: Path, tmp_path: Path, queues: Any, events_queue: EventsQueue,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any],
        sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3, cn = s3_clients["global"], s3_clients["china"]
    s3.put_bucket_versioning(Bucket=src, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=src, Key="hist.txt", Body=b"old version")  # before notifications
    notify(s3, src, events_queue)
    config = with_routes(config_path, tmp_path, f"""
[routes.versioned]
source = {{ endpoint = "global", bucket = "{src}" }}
sync_deletes = true
destinations = [{{ endpoint = "china", bucket = "{dst}", prefix = "v/" }}]
""")
    settings = load_settings(config, queue_url=queues.queue_url, dlq_url=queues.dlq_url)
    s3.put_object(Bucket=src, Key="doc \u00e9.txt", Body=b"version one")
    s3.put_object(Bucket=src, Key="other.txt", Body=b"stays")
    newest = s3.put_object(Bucket=src, Key="hist.txt", Body=b"new version")["VersionId"]
    only = s3.put_object(Bucket=src, Key="gone.txt", Body=b"single version")["VersionId"]
    await wait_for_depth(sqs_global, events_queue.url, 5)
    created = await listen(settings, events_queue)
    assert created.jobs == {"copy": 4}
    await run_until_idle(config, queues)
    assert_same_object(s3, src, cn, dst, "doc \u00e9.txt", "v/doc \u00e9.txt")
    assert body(cn, dst, "v/hist.txt") == b"new version"

    marker = s3.delete_object(Bucket=src, Key="doc \u00e9.txt")
    assert marker.get("DeleteMarker") is True
    s3.delete_object(Bucket=src, Key="hist.txt", VersionId=newest)  # the old one is current
    s3.delete_object(Bucket=src, Key="gone.txt", VersionId=only)    # nothing left
    await wait_for_depth(sqs_global, events_queue.url, 3)
    removed = await listen(settings, events_queue)
    assert removed.events == {"removed": 3}
    assert removed.jobs == {"delete": 2, "copy": 1}
    await run_until_idle(config, queues)

    assert absent(cn, dst, "v/doc \u00e9.txt")
    assert absent(cn, dst, "v/gone.txt")
    assert_same_object(s3, src, cn, dst, "hist.txt", "v/hist.txt")
    assert body(cn, dst, "v/hist.txt") == b"old version"
    assert body(cn, dst, "v/other.txt") == b"stays"
    assert dead_letters(sqs_global, queues) == {}
    assert dead_letters(sqs_global, events_queue) == {}


async def test_unparseable_messages_go_to_the_events_dlq_and_the_listener_keeps_going(
        config_path: Path, tmp_path: Path, queues: Any, events_queue: EventsQueue,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any],
        sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3 = s3_clients["global"]
    notify(s3, src, events_queue)
    config = with_routes(config_path, tmp_path, f"""
[routes.r]
source = {{ endpoint = "global", bucket = "{src}" }}
destinations = [{{ endpoint = "china", bucket = "{dst}" }}]
""")
    settings = load_settings(config, queue_url=queues.queue_url, dlq_url=queues.dlq_url)
    not_json = "this is {not json"
    not_s3 = json.dumps({"hello": "world"})
    no_key = json.dumps({"Records": [{"eventName": "ObjectCreated:Put",
                                      "s3": {"bucket": {"name": src}, "object": {}}}]})
    for garbage in (not_json, not_s3, no_key):
        sqs_global.send_message(QueueUrl=events_queue.url, MessageBody=garbage)

    async with ClientPool(settings.endpoints) as clients:
        sqs = await clients.get(settings.queue_endpoint, "sqs")
        listener = Listener(sqs=sqs, clients=clients, routes=list(settings.routes.values()),
                            settings=options(events_queue, settings, exit_when_idle=False),
                            metrics=DispatcherMetrics())
        running = asyncio.create_task(listener.run())
        try:
            deadline = time.monotonic() + 30
            while sum(listener.summary.dead_letters.values()) < 3:
                assert not running.done(), running.result()
                assert time.monotonic() < deadline, listener.summary
                await asyncio.sleep(0.2)
            # Only now does the valid event happen: the listener is still consuming.
            s3.put_object(Bucket=src, Key="after garbage.txt", Body=b"still alive")
            while listener.summary.jobs.get("copy", 0) < 1:
                assert not running.done(), running.result()
                assert time.monotonic() < deadline + 30, listener.summary
                await asyncio.sleep(0.2)
        finally:
            listener.stop()
            summary = await asyncio.wait_for(running, 30)

    assert summary.dead_letters == {"not_json": 1, "unknown_envelope": 1, "invalid_event": 1}
    assert dead_letters(sqs_global, events_queue) == {
        not_json: "not_json", not_s3: "unknown_envelope", no_key: "invalid_event"}
    await run_until_idle(config, queues)
    assert_same_object(s3, src, s3_clients["china"], dst, "after garbage.txt")
    assert dead_letters(sqs_global, queues) == {}
