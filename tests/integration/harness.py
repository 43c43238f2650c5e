"""Helpers for worker tests: queue jobs, run a worker in process until idle, compare objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.fingerprint import user_metadata
from common.jobs import CopyJob, CopyOptions, DeleteJob, DestinationRef, SourceRef, encode
from common.metrics import WorkerMetrics
from common.settings import Settings, load_settings
from worker.main import run_worker
from worker.replicate import Replicator
from worker.summary import Summary

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running(argv: Sequence[str], env: Mapping[str, str],
            log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the repo's, its output in ``log``; killed if the test leaves it running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def wait_for(condition: Callable[[], Any], *, timeout: float = 60, every: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


@contextmanager
def worker_process(config: Path, queues: Any, log: Path, *, port: int, log_level: str = "info",
                   **worker: object) -> Iterator[subprocess.Popen[bytes]]:
    """``s3ferry worker`` as a process of its own, its output in ``log``; ``worker`` settings
    go through the environment as the deploy files set them."""
    env = dict(os.environ, S3FERRY_LOG_FORMAT="json", S3FERRY_METRICS_HOST="127.0.0.1",
               S3FERRY_WORKER__WAIT_TIME_SECONDS="1", S3FERRY_LOG_LEVEL=log_level)
    env.update({f"S3FERRY_WORKER__{k.upper()}": str(v) for k, v in worker.items()})
    argv = [sys.executable, "-m", "worker", "--config", str(config), "--queue-url",
            queues.queue_url, "--dlq-url", queues.dlq_url, "--metrics-port", str(port)]
    with running(argv, env, log) as proc:
        yield proc


HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
           "ContentLanguage", "Expires")


def worker_settings(config_path: Path, queues: Any, **worker: Any) -> Settings:
    defaults: dict[str, Any] = {"wait_time_seconds": 1, "idle_polls": 2, "exit_when_idle": True,
                                "visibility_timeout": 30, "retry_max_seconds": 10,
                                "request_timeout": 30}
    defaults.update(worker)
    return load_settings(config_path, queue_url=queues.queue_url, dlq_url=queues.dlq_url,
                         worker=defaults)


async def run_until_idle(config_path: Path, queues: Any, *, metrics: WorkerMetrics | None = None,
                         replicator_cls: type[Replicator] = Replicator, **worker: Any) -> Summary:
    settings = worker_settings(config_path, queues, **worker)
    return await run_worker(settings, metrics=metrics, replicator_cls=replicator_cls)


def copy_job(src_ep: str, src_bucket: str, key: str, dst_ep: str, dst_bucket: str,
             dst_key: str | None = None, *, size: int | None = None, etag: str | None = None,
             storage_class: str | None = None, **options: Any) -> CopyJob:
    """A job as a test writes it; with ``size``/``etag``/``storage_class`` as the
    dispatcher's listing does."""
    return CopyJob(source=SourceRef(endpoint=src_ep, bucket=src_bucket, key=key, size=size,
                                    etag=etag, storage_class=storage_class),
                   destination=DestinationRef(endpoint=dst_ep, bucket=dst_bucket,
                                              key=dst_key or key),
                   options=CopyOptions(**options))


def listed_job(client: Any, src_ep: str, src_bucket: str, key: str, dst_ep: str,
               dst_bucket: str, **kwargs: Any) -> CopyJob:
    """A job carrying the size, ETag and class a listing saw (the worker's fast paths)."""
    head = client.head_object(Bucket=src_bucket, Key=key)
    return copy_job(src_ep, src_bucket, key, dst_ep, dst_bucket, size=head["ContentLength"],
                    etag=head["ETag"], storage_class=head.get("StorageClass", "STANDARD"),
                    **kwargs)


def route_toml(name: str, src_bucket: str, dst_bucket: str, *, prefix: str = "",
               src: str = "global", dst: str = "china") -> str:
    """A ``[routes.<name>]`` table: ``src_bucket`` (under ``prefix``) to ``dst_bucket``."""
    return (f'\n[routes.{name}]\n'
            f'source = {{ endpoint = "{src}", bucket = "{src_bucket}", prefix = "{prefix}" }}\n'
            f'destinations = [{{ endpoint = "{dst}", bucket = "{dst_bucket}" }}]\n')


def send(sqs: Any, queues: Any, jobs: Iterable[CopyJob | DeleteJob | str]) -> int:
    n = 0
    batch: list[dict[str, str]] = []
    for job in jobs:
        body = job if isinstance(job, str) else encode(job)
        batch.append({"Id": str(len(batch)), "MessageBody": body})
        n += 1
        if len(batch) == 10:
            _send_batch(sqs, queues.queue_url, batch)
            batch = []
    if batch:
        _send_batch(sqs, queues.queue_url, batch)
    return n


def _send_batch(sqs: Any, url: str, batch: list[dict[str, str]]) -> None:
    response = sqs.send_message_batch(QueueUrl=url, Entries=batch)
    assert not response.get("Failed"), response["Failed"]


def drain_queue(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message now visible on ``url`` (deleted as read), with attributes."""
    out: list[dict[str, Any]] = []
    while True:
        response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       MessageAttributeNames=["All"])
        messages = response.get("Messages", [])
        if not messages:
            return out
        for m in messages:
            out.append(m)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def dead_letters(sqs: Any, queues: Any) -> dict[str, str]:
    """Body -> reason attribute for every message in the DLQ."""
    return {m["Body"]: m["MessageAttributes"]["reason"]["StringValue"]
            for m in drain_queue(sqs, queues.dlq_url)}


def body(client: Any, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


# What rclone serve s3 (our stand-in for a quirky S3-compatible cloud) does not keep.
RCLONE_DROPS = frozenset({"tags", "Expires"})


def describe(client: Any, bucket: str, key: str, *,
             drops: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a user compares after a copy: headers, user metadata, tags, size.

    Metadata keys are compared case-insensitively, as S3 defines them (rclone capitalises).
    """
    head = client.head_object(Bucket=bucket, Key=key)
    tags = "tags" not in drops
    tag_set = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] if tags else []
    headers = {h: head.get(h) for h in HEADERS if h != "Expires"} | {
        "Expires": head.get("ExpiresString") or str(head.get("Expires") or "")}
    return {
        "size": head["ContentLength"],
        "headers": {h: v for h, v in headers.items() if h not in drops},
        "metadata": {k.lower(): v for k, v in user_metadata(head.get("Metadata", {})).items()},
        "tags": sorted((t["Key"], t["Value"]) for t in tag_set),
    }


def assert_same_object(src: Any, src_bucket: str, dst: Any, dst_bucket: str, key: str,
                       dst_key: str | None = None, *,
                       drops: frozenset[str] = frozenset()) -> None:
    """Bytes, headers, user metadata and tags are equal, but for what a store ``drops``."""
    dst_key = dst_key or key
    assert body(dst, dst_bucket, dst_key) == body(src, src_bucket, key), f"bytes differ: {key!r}"
    assert describe(dst, dst_bucket, dst_key, drops=drops) == describe(src, src_bucket, key,
                                                                        drops=drops)


def summary_json(summary: Summary) -> str:
    return json.dumps(summary.as_dict(), sort_keys=True)
