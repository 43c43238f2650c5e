"""What the worker cannot do goes to the dead-letter queue with a reason; nothing is lost,
nothing crashes, and a source that changes mid-copy never yields a mixed object."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.jobs import CopyJob, decode, encode, encode_bundle
from common.limits import MIB
from common.metrics import WorkerMetrics
from s3ferry.localbed import LocalBed, write_private
from tests.integration.harness import (
    body,
    copy_job,
    dead_letters,
    drain_queue,
    listed_job,
    run_until_idle,
    send,
)
from worker.planner import Part
from worker.replicate import Replicator
from worker.source import ByteSource, SourceObject

pytestmark = pytest.mark.timeout(300)


def valid_body(src: str, dst: str, key: str = "k") -> dict[str, Any]:
    return json.loads(copy_job("global", src, key, "china", dst).model_dump_json())


async def test_malformed_messages_land_in_the_dlq_with_their_reason(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3_clients["global"].put_object(Bucket=src, Key="good.txt", Body=b"fine")
    unknown_endpoint = valid_body(src, dst)
    unknown_endpoint["destination"]["endpoint"] = "mars"
    bad = {
        "this is not json {": "not_json",
        json.dumps([1, 2, 3]): "not_an_object",
        json.dumps(valid_body(src, dst) | {"v": 99}): "unknown_version",
        json.dumps(valid_body(src, dst) | {"kind": "teleport"}): "invalid_job",
        json.dumps(valid_body(src, dst) | {"surprise": True}): "invalid_job",
        json.dumps(valid_body(src, dst) | {"padding": "x" * 40_000}): "oversized",
        json.dumps(unknown_endpoint): "unknown_endpoint",
    }
    good = copy_job("global", src, "good.txt", "china", dst)
    send(sqs_global, queues, [*bad, good])

    summary = await run_until_idle(config_path, queues)

    assert dead_letters(sqs_global, queues) == bad
    assert summary.results["copied"] == 1
    assert body(s3_clients["china"], dst, "good.txt") == b"fine"
    assert drain_queue(sqs_global, queues.queue_url) == []


async def test_outcomes_vanished_archived_and_missing_bucket(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3_clients["global"].put_object(Bucket=src, Key="cold.bin", Body=b"ice",
                                    StorageClass="GLACIER")
    s3_clients["global"].put_object(Bucket=src, Key="here.txt", Body=b"x")
    vanished = copy_job("global", src, "deleted-after-listing.txt", "china", dst)
    archived = copy_job("global", src, "cold.bin", "china", dst)
    no_bucket = copy_job("global", src, "here.txt", "china", "bucket-that-does-not-exist")
    send(sqs_global, queues, [vanished, archived, no_bucket])

    summary = await run_until_idle(config_path, queues)

    letters = dead_letters(sqs_global, queues)
    assert sorted(letters.values()) == ["no_such_bucket", "source_archived"]
    assert summary.results["vanished"] == 1
    assert summary.results["archived"] == 1
    assert summary.results.get("retried", 0) == 0
    assert drain_queue(sqs_global, queues.queue_url) == []


async def test_a_bundles_jobs_each_meet_their_own_fate(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    good = {"a b+c%20/\u00e9t\u00e9.txt": b"summer", "empty": b"", "k" * 1024: b"long key"}
    for key, data in good.items():
        s3_clients["global"].put_object(Bucket=src, Key=key, Body=data)
    s3_clients["global"].put_object(Bucket=src, Key="cold.bin", Body=b"ice",
                                    StorageClass="GLACIER")
    jobs = [*(listed_job(s3_clients["global"], "global", src, k, "china", dst) for k in good),
            copy_job("global", src, "deleted-after-listing.txt", "china", dst),
            copy_job("global", src, "cold.bin", "china", dst, dst_key="cold-copy.bin"),
            copy_job("global", src, "empty", "china", "bucket-that-does-not-exist")]
    broken = valid_body(src, dst) | {"id": "broken", "kind": "teleport"}
    bundle = encode_bundle([*(encode(j) for j in jobs), json.dumps(broken)], bundle_id="b1")
    send(sqs_global, queues, [bundle])

    summary = await run_until_idle(config_path, queues)

    for key, data in good.items():
        assert body(s3_clients["china"], dst, key) == data
    letters = drain_queue(sqs_global, queues.dlq_url)
    # one dead letter per failed job, each a whole job message of its own
    fates = sorted((json.loads(m["Body"])["id"], m["MessageAttributes"]["reason"]["StringValue"],
                    m["MessageAttributes"]["bundle_id"]["StringValue"]) for m in letters)
    assert fates == sorted([(jobs[-2].id, "source_archived", "b1"),
                            (jobs[-1].id, "no_such_bucket", "b1"), ("broken", "invalid_job", "b1")])
    assert decode(next(m["Body"] for m in letters
                       if json.loads(m["Body"])["id"] == jobs[-1].id)) == jobs[-1]
    assert summary.results == {"copied": 3, "vanished": 1, "archived": 1, "failed": 1}
    assert drain_queue(sqs_global, queues.queue_url) == []


async def test_bad_credentials_are_not_retried(
        bed: LocalBed, config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any, tmp_path: Path) -> None:
    config = with_stale_endpoint(bed, config_path, tmp_path / "s3ferry.toml")
    src, dst = make_bucket("global"), make_bucket("rclone")
    s3_clients["global"].put_object(Bucket=src, Key="a.txt", Body=b"a")
    send(sqs_global, queues, [copy_job("global", src, "a.txt", "stale", dst)])

    summary = await run_until_idle(config, queues)

    letters = dead_letters(sqs_global, queues)
    assert len(letters) == 1
    (reason,) = letters.values()
    # A HEAD has no error body: a store can only say 403, which is all rclone says for a
    # wrong secret; with a body, AWS's codes (ExpiredToken, ...) become "credentials:<code>".
    assert reason == "access_denied" or reason.startswith("credentials:"), reason
    assert summary.results.get("retried", 0) == 0


def with_stale_endpoint(bed: LocalBed, config_path: Path, out: Path) -> Path:
    """The config plus endpoint ``stale``: rclone's address with a wrong secret."""
    rclone = bed.servers["rclone"]
    write_private(out, config_path.read_text() + f"""
[endpoints.stale]
endpoint_url = "{rclone.endpoint_url}"
region = "us-east-1"
addressing_style = "path"
checksums = "when_required"
credentials = {{ kind = "static", access_key_id = "{rclone.access_key}", \
secret_access_key = "expired-secret" }}
""")
    return out


class OverwriteOnce:
    """Reads through to the real source, but overwrites the source object just before
    reading part 2: the real server's If-Match check is what must stop a mixed copy."""

    overwritten = False

    def __init__(self, inner: ByteSource, overwrite: Callable[[], None]) -> None:
        self._inner = inner
        self._overwrite = overwrite
        self.description = inner.description

    async def head(self) -> SourceObject:
        return await self._inner.head()

    async def read(self, part: Part | None, *, etag: str) -> bytes:
        if part is not None and part.number == 2 and not OverwriteOnce.overwritten:
            OverwriteOnce.overwritten = True
            await asyncio.to_thread(self._overwrite)
        return await self._inner.read(part, etag=etag)

    async def tags(self) -> dict[str, str]:
        return await self._inner.tags()

    def copy_source(self) -> dict[str, str] | None:
        return self._inner.copy_source()


@pytest.mark.parametrize("change", ["overwritten", "deleted"])
async def test_a_source_changed_mid_copy_never_yields_a_mixed_object_nor_leaves_an_upload(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any, change: str) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    old, new = os.urandom(15 * MIB), os.urandom(15 * MIB)
    s3_clients["global"].put_object(Bucket=src, Key="moving.bin", Body=old)

    def overwrite() -> None:
        s3_clients["global"].put_object(Bucket=src, Key="moving.bin", Body=new)

    def delete() -> None:
        s3_clients["global"].delete_object(Bucket=src, Key="moving.bin")

    class Racing(Replicator):
        async def source_for(self, job: CopyJob) -> ByteSource:
            return OverwriteOnce(await super().source_for(job),
                                 overwrite if change == "overwritten" else delete)

    OverwriteOnce.overwritten = False
    send(sqs_global, queues, [copy_job("global", src, "moving.bin", "china", dst)])

    summary = await run_until_idle(config_path, queues, replicator_cls=Racing,
                                   part_size=5 * MIB, multipart_threshold=5 * MIB, max_parts=1)

    assert OverwriteOnce.overwritten
    if change == "overwritten":
        # the first attempt stopped at the changed source; the redelivery copied the new one
        assert summary.results == {"retried": 1, "copied": 1}
        assert body(s3_clients["china"], dst, "moving.bin") == new
    else:
        assert summary.results == {"vanished": 1}  # recorded, the message settled
        assert s3_clients["china"].list_objects_v2(Bucket=dst).get("KeyCount") == 0
    assert dead_letters(sqs_global, queues) == {}
    assert drain_queue(sqs_global, queues.queue_url) == []
    uploads = s3_clients["china"].list_multipart_uploads(Bucket=dst).get("Uploads", [])
    assert uploads == []  # the abandoned upload of the old version was aborted


class SlowRead:
    """A source whose first read takes longer than the message's lease."""

    def __init__(self, inner: ByteSource, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self.description = inner.description

    async def head(self) -> SourceObject:
        return await self._inner.head()

    async def read(self, part: Part | None, *, etag: str) -> bytes:
        await asyncio.sleep(self._delay)
        return await self._inner.read(part, etag=etag)

    async def tags(self) -> dict[str, str]:
        return await self._inner.tags()

    def copy_source(self) -> dict[str, str] | None:
        return self._inner.copy_source()


async def test_heartbeat_keeps_a_long_job_leased(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """A copy that outlives the visibility timeout is not handed out a second time."""
    src, dst = make_bucket("global"), make_bucket("china")
    s3_clients["global"].put_object(Bucket=src, Key="slow.txt", Body=b"slow")

    class Slow(Replicator):
        async def source_for(self, job: CopyJob) -> ByteSource:
            return SlowRead(await super().source_for(job), delay=14)

    metrics = WorkerMetrics()
    send(sqs_global, queues, [copy_job("global", src, "slow.txt", "china", dst)])

    summary = await run_until_idle(config_path, queues, replicator_cls=Slow, metrics=metrics,
                                   visibility_timeout=10)

    assert summary.results == {"copied": 1}
    assert metrics.messages_received._value.get() == 1
    assert body(s3_clients["china"], dst, "slow.txt") == b"slow"
