"""Fill the source buckets once, and check a destination against what was seeded.

Seeding uses parallel PUTs of random bytes; a set with ``seed_part_size`` is uploaded as one
streamed multipart upload per object (a few parts in memory at a time, never the object).
The sha256 of every object (or of every seeded part, for multipart seeds) is kept, so a
destination can be checked by reading back a sample, whatever tool wrote it: ETags are not
comparable across tools (multipart layouts differ) and not every tool writes checksums.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.workloads import ObjectSet

SEED_THREADS = 32
VERIFY_THREADS = 8


class VerifyError(AssertionError):
    """The destination does not hold what was seeded: the run does not count."""


@dataclass(frozen=True)
class Seeded:
    """One seeded source bucket and what it holds."""

    endpoint: str
    bucket: str
    objects: ObjectSet
    sizes: dict[str, int]
    digests: dict[str, str]  # key -> sha256, or "key#part" -> sha256 for multipart seeds
    seconds: float = 0.0


def seed(client: Any, endpoint: str, bucket: str, objects: ObjectSet) -> Seeded:
    client.create_bucket(**_bucket_args(client, bucket))
    keys = objects.keys()
    if objects.seed_part_size:
        digests: dict[str, str] = {}
        for key in keys:
            digests.update(_multipart(client, bucket, key, objects.size, objects.seed_part_size))
    else:
        with ThreadPoolExecutor(SEED_THREADS) as pool:
            pairs = pool.map(lambda k: (k, _put(client, bucket, k, objects.size)), keys)
            digests = dict(pairs)
    return Seeded(endpoint=endpoint, bucket=bucket, objects=objects,
                  sizes=dict.fromkeys(keys, objects.size), digests=digests)


def _bucket_args(client: Any, bucket: str) -> dict[str, Any]:
    region = client.meta.region_name
    args: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    return args


def create_bucket(client: Any, bucket: str) -> None:
    client.create_bucket(**_bucket_args(client, bucket))


def _put(client: Any, bucket: str, key: str, size: int) -> str:
    data = os.urandom(size)
    client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")
    return hashlib.sha256(data).hexdigest()


def _multipart(client: Any, bucket: str, key: str, size: int, part_size: int) -> dict[str, str]:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key,
                                            ContentType="application/octet-stream")["UploadId"]
    count = math.ceil(size / part_size)

    def part(index: int) -> tuple[int, str, str]:
        data = os.urandom(min(part_size, size - index * part_size))
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                    PartNumber=index + 1, Body=data)
        return index, answer["ETag"], hashlib.sha256(data).hexdigest()

    try:
        with ThreadPoolExecutor(4) as pool:  # at most 4 parts in memory
            done = sorted(pool.map(part, range(count)))
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e, _ in done]})
    return {f"{key}#{i}": digest for i, _, digest in done}


# -- verification --------------------------------------------------------------------------

def listing(client: Any, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def verify(client: Any, bucket: str, seeded: Seeded, sample: int,
           rng: random.Random) -> dict[str, Any]:
    """Every key with its size, and the bytes of ``sample`` objects (or parts), or raise."""
    found = listing(client, bucket)
    if found != seeded.sizes:
        missing = sorted(set(seeded.sizes) - set(found))[:5]
        extra = sorted(set(found) - set(seeded.sizes))[:5]
        wrong = sorted(k for k in set(found) & set(seeded.sizes)
                       if found[k] != seeded.sizes[k])[:5]
        raise VerifyError(f"{bucket}: {len(found)} objects, expected {len(seeded.sizes)}; "
                          f"missing {missing}, extra {extra}, wrong size {wrong}")
    checks = rng.sample(sorted(seeded.digests), min(sample, len(seeded.digests)))
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        bad = [c for c, ok in zip(checks, pool.map(
            lambda c: _content_ok(client, bucket, seeded, c), checks), strict=True) if not ok]
    if bad:
        raise VerifyError(f"{bucket}: content differs for {bad[:5]}")
    return {"objects": len(found), "bytes": sum(found.values()), "content_checked": len(checks)}


def _content_ok(client: Any, bucket: str, seeded: Seeded, check: str) -> bool:
    key, _, part = check.partition("#")
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if part:
        size = seeded.objects.seed_part_size
        start = int(part) * size
        end = min(start + size, seeded.sizes[key]) - 1
        args["Range"] = f"bytes={start}-{end}"
    digest = hashlib.sha256()
    body = client.get_object(**args)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest() == seeded.digests[check]


def drop_bucket(client: Any, bucket: str) -> None:
    """Delete every object, unfinished upload and the bucket itself (frees the emulator)."""
    keys = list(listing(client, bucket))
    for batch in _chunks(keys, 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                     "Quiet": True})
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
