"""The worker copies across partitions, within one, and to a third S3 implementation:
bytes, metadata and tags equal afterwards, every copy verified."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.limits import MIB
from common.metrics import WorkerMetrics
from tests.integration.harness import (
    RCLONE_DROPS,
    assert_same_object,
    body,
    copy_job,
    dead_letters,
    listed_job,
    run_until_idle,
    send,
)

pytestmark = pytest.mark.timeout(300)

RICH = {
    "ContentType": "application/x-ferry; charset=utf-8",
    "CacheControl": "max-age=3600, public",
    "ContentDisposition": 'attachment; filename="report.bin"',
    "ContentEncoding": "identity",
    "ContentLanguage": "de-CH",
    "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
    "Metadata": {"owner": "data-team", "pipeline": "nightly"},
    "Tagging": "project=ferry&cost-center=42&space%20key=a%2Bb",
}


def seed(client: Any, bucket: str, key: str, size: int, **extra: Any) -> bytes:
    data = os.urandom(size)
    args = dict(RICH)
    args.update(extra)
    client.put_object(Bucket=bucket, Key=key, Body=data, **args)
    return data


SIZES_AROUND_5_MIB = [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 11 * MIB + 3]


async def test_cross_partition_sizes_around_part_boundaries(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    keys = [f"sizes/{size}.bin" for size in SIZES_AROUND_5_MIB]
    for key, size in zip(keys, SIZES_AROUND_5_MIB, strict=True):
        seed(s3_clients["global"], src, key, size)
    send(sqs_global, queues, [copy_job("global", src, k, "china", dst) for k in keys])

    summary = await run_until_idle(config_path, queues, part_size=5 * MIB,
                                   multipart_threshold=5 * MIB)

    assert dead_letters(sqs_global, queues) == {}
    assert summary.results["copied"] == len(keys)
    assert summary.strategies == {"stream_put": 4, "stream_multipart": 2}
    assert set(summary.verified) == {"source_checksum"}
    for key in keys:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)


async def test_multipart_object_in_8_mib_parts_keeps_a_full_object_checksum(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    seed(s3_clients["global"], src, "big/forty.bin", 40 * MIB)
    send(sqs_global, queues, [copy_job("global", src, "big/forty.bin", "china", dst)])

    summary = await run_until_idle(config_path, queues, part_size=8 * MIB,
                                   multipart_threshold=8 * MIB, max_parts=4)

    assert summary.strategies == {"stream_multipart": 1}
    assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, "big/forty.bin")
    src_head = s3_clients["global"].head_object(Bucket=src, Key="big/forty.bin",
                                                ChecksumMode="ENABLED")
    dst_head = s3_clients["china"].head_object(Bucket=dst, Key="big/forty.bin",
                                               ChecksumMode="ENABLED")
    assert dst_head.get("ChecksumType") == "FULL_OBJECT"
    assert dst_head["ChecksumCRC32"] == src_head["ChecksumCRC32"]
    parts = s3_clients["china"].head_object(Bucket=dst, Key="big/forty.bin", PartNumber=1)
    assert parts.get("PartsCount") == 5


AWKWARD_KEYS = [
    "with space/file name.txt",
    "plus+sign/a+b.txt",
    "percent%2Fencoded%20/100%.txt",
    "unicode/日本語/über/😀.txt",
    "x" * 1000 + "/" + "é" * 11,  # 1,023 bytes
    "k" * 1024,  # exactly S3's 1,024-byte limit
    "trailing-slash-like/.",
]


def fits_a_filesystem(key: str) -> bool:
    """rclone serve s3 stores keys as file paths: no segment over 255 bytes, no "."."""
    return all(len(part.encode()) <= 255 and part not in {".", ".."}
               for part in key.split("/"))


@pytest.mark.parametrize("dst_server", ["china", "rclone"])
async def test_awkward_keys_copy_byte_equal(
        dst_server: str, config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    keys = [k for k in AWKWARD_KEYS if dst_server != "rclone" or fits_a_filesystem(k)]
    src, dst = make_bucket("global"), make_bucket(dst_server)
    for key in keys:
        assert len(key.encode()) <= 1024
        seed(s3_clients["global"], src, key, 1024)
    send(sqs_global, queues, [copy_job("global", src, k, dst_server, dst) for k in keys])

    summary = await run_until_idle(config_path, queues)

    assert dead_letters(sqs_global, queues) == {}
    assert summary.results["copied"] == len(keys)
    for key in keys:
        assert_same_object(s3_clients["global"], src, s3_clients[dst_server], dst, key,
                           drops=RCLONE_DROPS if dst_server == "rclone" else frozenset())


async def test_key_the_destination_store_refuses_goes_to_the_dlq_with_its_reason(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """A 1,024-byte key is legal S3 but not a legal file name for rclone's local backend."""
    src, dst = make_bucket("global"), make_bucket("rclone")
    key = "k" * 1024
    seed(s3_clients["global"], src, key, 10)
    job = copy_job("global", src, key, "rclone", dst)
    send(sqs_global, queues, [job])

    summary = await run_until_idle(config_path, queues, max_attempts=2)

    letters = dead_letters(sqs_global, queues)
    assert list(letters.values()) in (["s3:400"], ["retries_exhausted"])
    assert summary.results["failed"] == 1


async def test_third_party_store_as_destination_and_source(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """rclone serve s3 has other ETags, no flexible checksums: copies still verified."""
    src, mid, dst = make_bucket("global"), make_bucket("rclone"), make_bucket("china")
    seed(s3_clients["global"], src, "small.txt", 3000)
    seed(s3_clients["global"], src, "multi.bin", 12 * MIB + 7)
    send(sqs_global, queues, [copy_job("global", src, k, "rclone", mid)
                              for k in ("small.txt", "multi.bin")])
    first = await run_until_idle(config_path, queues, part_size=5 * MIB,
                                 multipart_threshold=5 * MIB)
    assert dead_letters(sqs_global, queues) == {}
    assert first.results["copied"] == 2
    assert set(first.verified) == {"content_md5"}
    for key in ("small.txt", "multi.bin"):
        assert_same_object(s3_clients["global"], src, s3_clients["rclone"], mid, key,
                           drops=RCLONE_DROPS)

    send(sqs_global, queues, [copy_job("rclone", mid, k, "china", dst)
                              for k in ("small.txt", "multi.bin")])
    second = await run_until_idle(config_path, queues, part_size=5 * MIB,
                                  multipart_threshold=5 * MIB)
    assert dead_letters(sqs_global, queues) == {}
    assert second.results["copied"] == 2
    for key in ("small.txt", "multi.bin"):
        assert_same_object(s3_clients["rclone"], mid, s3_clients["china"], dst, key,
                           drops=RCLONE_DROPS)


@pytest.mark.parametrize("budget", [0, 5 * MIB])
async def test_same_endpoint_copies_server_side(
        budget: int, config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """With a copy budget (5 MiB: one part, or the 2 MiB object, at a time) as without."""
    src, dst = make_bucket("global"), make_bucket("global")
    seed(s3_clients["global"], src, "one.bin", 2 * MIB)
    seed(s3_clients["global"], src, "parts.bin", 12 * MIB + 1)
    send(sqs_global, queues, [copy_job("global", src, k, "global", dst, f"copied/{k}")
                              for k in ("one.bin", "parts.bin")])

    summary = await run_until_idle(config_path, queues, server_copy_threshold=5 * MIB,
                                   server_part_size=5 * MIB, server_copy_budget=budget)

    assert dead_letters(sqs_global, queues) == {}
    assert summary.strategies == {"server_copy": 1, "server_multipart": 1}
    assert summary.bytes_copied == 14 * MIB + 1
    for key in ("one.bin", "parts.bin"):
        assert_same_object(s3_clients["global"], src, s3_clients["global"], dst, key,
                           f"copied/{key}")


async def test_listed_copy_within_one_store_is_one_copy_object(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """Backfill jobs inside one store (destination seen missing): the store copies headers,
    metadata, tags and the listed class itself; a source changed since the listing is still
    copied in its new version, by the long way."""
    src, dst = make_bucket("global"), make_bucket("global")
    g = s3_clients["global"]
    seed(g, src, "plain.txt", 1000)
    seed(g, src, "infrequent.bin", 3000, StorageClass="STANDARD_IA")
    upload_in_parts(g, src, "parts.bin", [os.urandom(5 * MIB), os.urandom(10)])
    seed(g, src, "changed.txt", 10)
    keys = ("plain.txt", "infrequent.bin", "parts.bin", "changed.txt")
    jobs = [listed_job(g, "global", src, k, "global", dst, destination_absent=True)
            for k in keys]
    new = seed(g, src, "changed.txt", 20)  # overwritten after it was listed
    send(sqs_global, queues, jobs)
    metrics = WorkerMetrics()

    summary = await run_until_idle(config_path, queues, metrics=metrics,
                                   server_copy_budget=MIB)  # smaller than parts.bin

    assert dead_letters(sqs_global, queues) == {}
    assert summary.results == {"copied": 4}
    assert summary.strategies == {"server_copy": 4}
    requests = metrics.s3_requests
    # one CopyObject each; the changed one is refused (412) and copied again after its HEADs
    assert requests.labels("CopyObject", "source")._value.get() == 5
    assert requests.labels("HeadObject", "source")._value.get() == 1
    # + the multipart source, whose copy gets a new ETag: its size is checked with a HEAD
    assert requests.labels("HeadObject", "destination")._value.get() == 2
    for key in keys:  # LocalStack's CopyObject drops Expires (AWS keeps it with COPY)
        assert_same_object(g, src, g, dst, key, drops=frozenset({"Expires"}))
    assert g.head_object(Bucket=dst, Key="infrequent.bin")["StorageClass"] == "STANDARD_IA"
    assert body(g, dst, "changed.txt") == new

    plain = copy_job("global", src, "plain.txt", "global", dst)  # e.g. a redelivery
    send(sqs_global, queues, [plain])
    again = await run_until_idle(config_path, queues)
    assert again.skipped == {"already_copied:etag": 1}


async def test_redelivered_job_is_skipped_not_copied_again(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    seed(s3_clients["global"], src, "once.txt", 100)
    job = copy_job("global", src, "once.txt", "china", dst)
    send(sqs_global, queues, [job])
    first = await run_until_idle(config_path, queues)
    before = s3_clients["china"].head_object(Bucket=dst, Key="once.txt")

    send(sqs_global, queues, [job, job])
    second = await run_until_idle(config_path, queues)

    after = s3_clients["china"].head_object(Bucket=dst, Key="once.txt")
    assert first.results["copied"] == 1
    assert second.results == {"skipped": 2}
    assert second.skipped == {"already_copied:fingerprint": 2}
    assert after["LastModified"] == before["LastModified"]


@pytest.mark.parametrize("dst_server", ["china", "rclone"])
async def test_listed_small_objects_take_one_get_and_keep_everything(
        dst_server: str, config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """Jobs that carry the listed size and ETag (as the dispatcher sends them)."""
    src, dst = make_bucket("global"), make_bucket(dst_server)
    g = s3_clients["global"]
    seed(g, src, "tagged.txt", 100)
    seed(g, src, "untagged.txt", 0, Tagging="")
    seed(g, src, "changed.txt", 50)
    jobs = [listed_job(g, "global", src, k, dst_server, dst)
            for k in ("tagged.txt", "untagged.txt", "changed.txt")]
    new = seed(g, src, "changed.txt", 70)  # overwritten after it was listed
    send(sqs_global, queues, jobs)
    metrics = WorkerMetrics()

    summary = await run_until_idle(config_path, queues, metrics=metrics)

    assert dead_letters(sqs_global, queues) == {}
    assert summary.results == {"copied": 3}
    requests = metrics.s3_requests
    # one GET per object, no HEAD, except the one that changed since it was listed
    assert requests.labels("HeadObject", "source")._value.get() == 1
    assert requests.labels("GetObject", "source")._value.get() == 4
    assert requests.labels("PutObject", "destination")._value.get() == 3
    drops = RCLONE_DROPS if dst_server == "rclone" else frozenset()
    for key in ("tagged.txt", "untagged.txt", "changed.txt"):
        assert_same_object(g, src, s3_clients[dst_server], dst, key, drops=drops)
    assert body(s3_clients[dst_server], dst, "changed.txt") == new

    send(sqs_global, queues, jobs[:2])  # redelivered: skipped on the fast path too
    again = await run_until_idle(config_path, queues)
    assert again.results == {"skipped": 2}


def upload_in_parts(client: Any, bucket: str, key: str, parts: list[bytes]) -> None:
    """A multipart upload with CRC32 parts: S3 gives it a COMPOSITE checksum."""
    up = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32",
                                        **{k: v for k, v in RICH.items() if k != "Expires"})
    done = []
    for number, data in enumerate(parts, 1):
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                               PartNumber=number, Body=data, ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": done})


async def test_composite_checksum_sources_are_verified_against_the_source(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """Multipart sources with only a COMPOSITE checksum are copied in their own layout so
    the worker can prove it read the source's bytes (not just that it wrote what it read)."""
    src, dst = make_bucket("global"), make_bucket("china")
    g = s3_clients["global"]
    upload_in_parts(g, src, "three.bin", [os.urandom(6 * MIB), os.urandom(6 * MIB),
                                          os.urandom(1234)])
    upload_in_parts(g, src, "small-two.bin", [os.urandom(5 * MIB), os.urandom(7)])
    head = g.head_object(Bucket=src, Key="three.bin", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE"
    send(sqs_global, queues, [copy_job("global", src, k, "china", dst)
                              for k in ("three.bin", "small-two.bin")])

    summary = await run_until_idle(config_path, queues, part_size=8 * MIB,
                                   multipart_threshold=8 * MIB)

    assert dead_letters(sqs_global, queues) == {}
    assert summary.verified == {"source_checksum": 2}
    assert summary.strategies == {"stream_multipart": 1, "stream_put": 1}
    for key in ("three.bin", "small-two.bin"):
        assert_same_object(g, src, s3_clients["china"], dst, key)


async def test_destination_seen_absent_skips_the_head_only_on_the_first_attempt(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    g = s3_clients["global"]
    for i in range(3):
        seed(g, src, f"new-{i}.txt", 10, Tagging="")
    jobs = [listed_job(g, "global", src, f"new-{i}.txt", "china", dst, destination_absent=True)
            for i in range(3)]
    send(sqs_global, queues, jobs)
    metrics = WorkerMetrics()

    first = await run_until_idle(config_path, queues, metrics=metrics)

    requests = metrics.s3_requests
    assert first.results == {"copied": 3}
    assert requests.labels("HeadObject", "destination")._value.get() == 0
    assert requests.labels("GetObjectTagging", "source")._value.get() == 0  # GET said none
    for i in range(3):
        assert_same_object(g, src, s3_clients["china"], dst, f"new-{i}.txt")

    send(sqs_global, queues, jobs)  # a second delivery is a new message, first receive
    again = await run_until_idle(config_path, queues)
    assert again.results == {"copied": 3}  # overwritten with identical bytes, never lost
    for i in range(3):
        assert_same_object(g, src, s3_clients["china"], dst, f"new-{i}.txt")
