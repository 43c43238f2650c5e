"""Faults between the workers and the local partitions (:mod:`tests.faultproxy`): whatever the
store or the network does, every object arrives whole, with its headers, metadata and tags;
no multipart upload is left open; a failure ends in the dead-letter queue only with its true
reason, and a copy that succeeded never does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.jobs import encode
from common.limits import KIB, MIB
from common.metrics import WorkerMetrics
from s3ferry.localbed import LocalBed, free_port, write_private
from tests.faultproxy import Fault, FaultProxy, rules
from tests.integration.harness import (
    assert_same_object,
    copy_job,
    dead_letters,
    drain_queue,
    listed_job,
    route_toml,
    run_until_idle,
    running,
    send,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.timeout(300)
# What each fault test's worker runs with: short leases so redeliveries come quickly.
FAULTY = {"visibility_timeout": 10, "part_size": 5 * MIB, "multipart_threshold": 5 * MIB,
          "max_parts": 4, "retry_max_seconds": 20}


@pytest.fixture(scope="module")
def proxies(bed: LocalBed) -> Iterator[dict[str, FaultProxy]]:
    """A fault proxy in front of each partition (its S3 and its SQS)."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(FaultProxy(bed.servers[name].endpoint_url, seed=21))
               for name in ("global", "china")}


@pytest.fixture
def faults(proxies: dict[str, FaultProxy]) -> Iterator[dict[str, FaultProxy]]:
    """The proxies, with no rules and fresh counts; rules are cleared after the test."""
    for proxy in proxies.values():
        proxy.clear()
        proxy.injected.clear()
        proxy.seen.clear()
    yield proxies
    for proxy in proxies.values():
        proxy.clear()


@pytest.fixture(scope="module")
def faulty_config(bed: LocalBed, proxies: dict[str, FaultProxy],
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """s3ferry's config with every endpoint (and the queue) behind its proxy."""
    def behind(name: str, as_name: str | None = None) -> str:
        server = dataclasses.replace(bed.servers[name], endpoint_url=proxies[name].url)
        return server.endpoint_toml(as_name)

    path = tmp_path_factory.mktemp("faulty") / "s3ferry.toml"
    write_private(path, "\n".join([behind("global"), behind("china"),
                                   behind("global", "queue")]))
    return path


def open_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def seed_objects(client: Any, bucket: str, *, small: int, large: int,
                 seed: int = 7) -> dict[str, int]:
    """Objects with headers, metadata and tags: ``small`` of 0-64 KiB, ``large`` of 11-16 MiB
    (three parts or more). Returns key -> size."""
    rng = random.Random(seed)
    sizes = {f"small/{i:03d}.txt": rng.randrange(0, 64 * KIB) for i in range(small)}
    sizes |= {f"large/{i:02d}.bin": rng.randrange(11 * MIB, 16 * MIB) for i in range(large)}
    for n, (key, size) in enumerate(sizes.items()):
        client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size),
                          ContentType="application/x-test", CacheControl="max-age=60",
                          Metadata={"owner": f"team-{n % 3}"}, Tagging=f"n={n}&kind=test")
    return sizes


def retries(metrics: WorkerMetrics) -> dict[str, float]:
    return {s.labels["reason"]: s.value for family in metrics.retries.collect()
            for s in family.samples if s.name.endswith("_total")}


async def test_throttling_resets_and_truncations_copy_everything_and_count_every_retry(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst, same = make_bucket("global"), make_bucket("china"), make_bucket("global")
    sizes = seed_objects(s3_clients["global"], src, small=24, large=3)
    jobs = []
    for n, key in enumerate(sizes):
        make = listed_job if n % 2 else (lambda c, *a, **k: copy_job(*a, **k))
        jobs.append(make(s3_clients["global"], "global", src, key, "china", dst))
        jobs.append(make(s3_clients["global"], "global", src, key, "global", same))
    send(sqs_global, queues, jobs)
    every_s3_call = (rules(Fault.SLOWDOWN, 0.10), rules(Fault.RESET, 0.03),
                     rules(Fault.TRUNCATE, 0.02),
                     rules(Fault.ERROR_200, 0.2, "CopyObject", "UploadPartCopy",
                           "CompleteMultipartUpload"))
    for proxy in faults.values():
        proxy.set_rules(rules_for_s3(every_s3_call))
    metrics = WorkerMetrics()

    summary = await run_until_idle(faulty_config, queues, metrics=metrics, **FAULTY)

    for proxy in faults.values():
        proxy.clear()
    for key in sizes:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)
        assert_same_object(s3_clients["global"], src, s3_clients["global"], same, key)
    assert dead_letters(sqs_global, queues) == {}
    assert drain_queue(sqs_global, queues.queue_url) == []
    assert open_uploads(s3_clients["china"], dst) == open_uploads(s3_clients["global"],
                                                                  same) == []
    assert summary.results["copied"] + summary.results["skipped"] == len(jobs)
    slowdowns = sum(p.injected_total(Fault.SLOWDOWN) for p in faults.values())
    counted = retries(metrics)
    assert slowdowns > 5 and sum(p.injected_total() for p in faults.values()) > 20
    # each 503 was retried (in the process, or as a job); resets and truncations are retried
    # too, unless the connection pool resent an idempotent request on a fresh connection
    assert counted.get("throttled", 0) + summary.results["retried"] >= slowdowns
    assert counted.get("network", 0) + counted.get("corrupt_transfer", 0) > 0

def rules_for_s3(chosen: tuple[Any, ...]) -> list[Any]:
    """``chosen`` restricted to S3: the same proxy carries the queue's calls."""
    return [dataclasses.replace(r, operations=r.operations or S3_OPERATIONS) for r in chosen]


S3_OPERATIONS = frozenset({
    "GetObject", "HeadObject", "PutObject", "CopyObject", "UploadPart", "UploadPartCopy",
    "CreateMultipartUpload", "CompleteMultipartUpload", "AbortMultipartUpload", "ListParts",
    "ListMultipartUploads", "GetObjectTagging", "PutObjectTagging", "DeleteObject"})


def without_direct_requests(config: Path, out: Path) -> Path:
    """The same config with every endpoint's calls through botocore."""
    text = config.read_text().replace('addressing_style = "path"\n',
                                      'addressing_style = "path"\ndirect_requests = false\n')
    return write_private(out, text)


@pytest.mark.parametrize("wire", ["direct", "botocore"])
async def test_refusals_are_dead_lettered_with_their_reason_while_other_jobs_copy(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any, tmp_path: Path,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any,
        wire: str) -> None:
    config = faulty_config if wire == "direct" else without_direct_requests(
        faulty_config, tmp_path / "botocore.toml")
    src, dst = make_bucket("global"), make_bucket("china")
    payloads = {"ok/a.txt": b"a", "ok/b.bin": os.urandom(12 * MIB),
                "denied/small.txt": b"no", "denied/big.bin": os.urandom(12 * MIB),
                "expired/c.txt": b"late", "ok/missing-bucket.txt": b"nowhere"}
    for key, data in payloads.items():
        s3_clients["global"].put_object(Bucket=src, Key=key, Body=data)
    # S3 refuses an upload from its headers, before reading the body: the same here
    faults["china"].set_rules([
        rules(Fault.EARLY_ERROR, 1.0, "PutObject", "UploadPart", match="/denied/"),
        rules(Fault.EARLY_ERROR, 1.0, "PutObject", match="/expired/", code="ExpiredToken")])
    jobs = {key: copy_job("global", src, key, "china", dst) for key in payloads}
    jobs["ok/missing-bucket.txt"] = copy_job("global", src, "ok/missing-bucket.txt", "china",
                                             "bucket-that-does-not-exist")
    send(sqs_global, queues, jobs.values())

    summary = await run_until_idle(config, queues, **FAULTY)

    faults["china"].clear()
    letters = {m["Body"]: (m["MessageAttributes"]["reason"]["StringValue"],
                           m["MessageAttributes"]["receive_count"]["StringValue"])
               for m in drain_queue(sqs_global, queues.dlq_url)}
    assert letters == {
        encode(jobs["denied/small.txt"]): ("access_denied", "1"),
        encode(jobs["denied/big.bin"]): ("access_denied", "1"),
        encode(jobs["expired/c.txt"]): ("credentials:ExpiredToken", "1"),
        encode(jobs["ok/missing-bucket.txt"]): ("no_such_bucket", "1")}
    for key in ("ok/a.txt", "ok/b.bin"):
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)
    assert summary.results == {"copied": 2, "failed": 4}
    assert open_uploads(s3_clients["china"], dst) == []
    assert drain_queue(sqs_global, queues.queue_url) == []


async def test_a_job_held_by_two_workers_at_once_ends_as_one_correct_object(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any) -> None:
    """Duplicates of every job, half the heartbeats lost, slow parts: two workers race for
    the same keys. Each key ends as one correct object, the losers record ``skipped``, nothing
    is dead-lettered and no upload is left open."""
    src, dst = make_bucket("global"), make_bucket("china")
    sizes = seed_objects(s3_clients["global"], src, small=4, large=3, seed=11)
    jobs = [copy_job("global", src, key, "china", dst) for key in sizes]
    send(sqs_global, queues, [*jobs, *jobs])  # every job twice, as a re-run backfill may
    faults["global"].set_rules([rules(Fault.DROP, 0.8, "ChangeMessageVisibilityBatch")])
    faults["china"].set_rules([rules(Fault.LATENCY, 1.0, "UploadPart", seconds=1.5)])
    metrics = [WorkerMetrics(), WorkerMetrics()]

    summaries = await asyncio.gather(*(
        run_until_idle(faulty_config, queues, metrics=m, max_attempts=8, max_jobs=3,
                       **{**FAULTY, "max_parts": 2}) for m in metrics))

    for proxy in faults.values():
        proxy.clear()
    for key in sizes:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)
    assert dead_letters(sqs_global, queues) == {}
    assert drain_queue(sqs_global, queues.queue_url) == []
    assert open_uploads(s3_clients["china"], dst) == []
    results = summaries[0].results + summaries[1].results
    # each message settled once; whoever found the key written or being written skipped it
    assert results["copied"] + results["skipped"] == 2 * len(jobs)
    assert results["copied"] >= len(jobs) and results["skipped"] >= 1
    assert "failed" not in results


def parts_seen(client: Any, bucket: str) -> set[tuple[str, int]]:
    """(upload id, part number) of every part of every upload open in ``bucket``."""
    seen = set()
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        with contextlib.suppress(Exception):  # completed or aborted meanwhile
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"]).get("Parts", [])
            seen |= {(upload["UploadId"], p["PartNumber"]) for p in parts}
    return seen


async def test_workers_killed_mid_copy_again_and_again_finish_and_leave_no_upload_open(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any, tmp_path: Path) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    sizes = seed_objects(s3_clients["global"], src, small=2, large=4, seed=5)
    send(sqs_global, queues, [copy_job("global", src, key, "china", dst) for key in sizes])
    settings = {**FAULTY, "max_parts": 2, "max_jobs": 2}
    logs = []
    for round_ in range(3):  # a worker starts, uploads some parts, and is killed
        before = parts_seen(s3_clients["china"], dst)
        logs.append(tmp_path / f"worker-{round_}.log")
        with worker_process(config_path, queues, logs[-1], port=free_port(),
                            **settings) as proc:
            wait_for(lambda seen=before: len(parts_seen(s3_clients["china"], dst) - seen) >= 2,
                     timeout=90, every=0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    metrics = WorkerMetrics()

    summary = await run_until_idle(config_path, queues, metrics=metrics, **settings)

    for key in sizes:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)
    assert open_uploads(s3_clients["china"], dst) == []
    assert dead_letters(sqs_global, queues) == {}
    assert drain_queue(sqs_global, queues.queue_url) == []
    # the killed workers' parts were taken over, not uploaded again
    events = [json.loads(line) for log in logs[1:] for line in log.read_text().splitlines()
              if line.startswith("{")]
    reused = metrics.parts_reused._value.get() + sum(
        e["parts_found"] for e in events if e["event"] == "upload_resumed")
    assert reused >= 2, summary.as_dict()


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def test_a_failing_queue_leaves_the_worker_running_but_not_ready_until_it_answers(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any,
        tmp_path: Path) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    s3_clients["global"].put_object(Bucket=src, Key="after.txt", Body=b"the queue is back")
    faults["global"].set_rules([rules(Fault.INTERNAL, 1.0, "ReceiveMessage")])
    port = free_port()
    with worker_process(faulty_config, queues, tmp_path / "worker.log", port=port,
                        **FAULTY) as proc:
        wait_for(lambda: faults["global"].injected[("ReceiveMessage", "internal")] >= 6,
                 timeout=60, every=0.1)
        status, why = probe(port, "/readyz")
        assert (status, proc.poll()) == (503, None), why
        assert "ReceiveMessage failed" in why
        assert probe(port, "/healthz")[0] == 200  # alive: its event loop turns

        faults["global"].clear()
        wait_for(lambda: probe(port, "/readyz")[0] == 200, timeout=60, every=0.2)
        send(sqs_global, queues, [copy_job("global", src, "after.txt", "china", dst)])
        wait_for(lambda: dst_keys(s3_clients["china"], dst), timeout=60, every=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, "after.txt")
    assert dead_letters(sqs_global, queues) == {}


def dst_keys(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


SECRET, TOKEN = "SECRET-k3y-do-not-print-0451", "TOKEN-s3ss10n-do-not-print-2112"


def with_keys(config: Path, out: Path) -> Path:
    """The same config with a secret key and a session token of ours on every endpoint."""
    text = config.read_text().replace(
        'secret_access_key = "test" }',
        f'secret_access_key = "{SECRET}", session_token = "{TOKEN}" }}')
    assert text.count(SECRET) == 3
    return write_private(out, text)


async def test_no_key_token_signature_or_presigned_query_reaches_a_log(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any,
        tmp_path: Path) -> None:
    """A whole faulty run at debug level, whose store quotes the request's credentials back
    in its error messages: its log and its dead letters hold none of them."""
    config = with_keys(faulty_config, tmp_path / "keys.toml")
    src, dst = make_bucket("global"), make_bucket("china")
    sizes = seed_objects(s3_clients["global"], src, small=6, large=2, seed=3)
    s3_clients["global"].put_object(Bucket=src, Key="refused/x.txt", Body=b"x")
    keys = [*sizes, "refused/x.txt"]
    send(sqs_global, queues, [copy_job("global", src, key, "china", dst) for key in keys])
    for proxy in faults.values():
        proxy.set_rules(rules_for_s3((
            rules(Fault.EARLY_ERROR, 1.0, "PutObject", match="/refused/", echo=True,
                  code="SignatureDoesNotMatch"),
            rules(Fault.INTERNAL, 0.3, echo=True))))
    log = tmp_path / "worker.log"
    with worker_process(config, queues, log, port=free_port(), log_level="debug",
                        exit_when_idle=True, **FAULTY) as proc:
        proc.wait(timeout=240)
    letters = drain_queue(sqs_global, queues.dlq_url)

    assert sum(p.injected_total() for p in faults.values()) > 5
    for key in sizes:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)
    [letter] = letters
    assert letter["MessageAttributes"]["reason"]["StringValue"] == (
        "credentials:SignatureDoesNotMatch")
    written = log.read_text() + json.dumps(letters)
    assert "REDACTED" in written  # what the store said was scrubbed, not lost
    for secret in (SECRET, TOKEN):
        assert secret not in written
    assert not re.search(r"\b[0-9a-f]{64}\b", written)  # no SigV4 signature
    assert not re.search(r"(?i)(X-Amz-Credential|X-Amz-Signature)=(?!REDACTED)", written)
    assert not re.search(r"(?i)Authorization: AWS4-HMAC-SHA256 Credential", written)


def backfill_argv(config: Path, queues: Any) -> list[str]:
    return [sys.executable, "-m", "s3ferry", "backfill", "--config", str(config),
            "--queue-url", queues.queue_url]


def backfill(config: Path, queues: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(backfill_argv(config, queues), capture_output=True, text=True,
                          timeout=120, check=False)


def queued(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def etags(client: Any, bucket: str) -> dict[str, tuple[int, str]]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found |= {o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])}
    return found


async def test_a_backfill_killed_midway_and_run_again_converges(
        faulty_config: Path, faults: dict[str, FaultProxy], queues: Any,
        make_bucket: Callable[[str], str], s3_clients: dict[str, Any], sqs_global: Any,
        tmp_path: Path) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    for n in range(400):
        s3_clients["global"].put_object(Bucket=src, Key=f"k/{n:04d}", Body=os.urandom(n))
    config = write_private(tmp_path / "routes.toml", with_route(faulty_config, src, dst))
    # the first send goes through, every later one hangs: killed with part of its jobs sent
    faults["global"].set_rules([rules(Fault.LATENCY, 1.0, "SendMessageBatch", seconds=600,
                                      after=1)])
    with running(backfill_argv(config, queues), dict(os.environ),
                 tmp_path / "backfill-1.log") as killed:
        wait_for(lambda: queued(sqs_global, queues.queue_url) > 0, timeout=60, every=0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    faults["global"].clear()
    await run_until_idle(config, queues, **FAULTY)
    assert 0 < len(etags(s3_clients["china"], dst)) < 400  # what the first run had sent

    again = await asyncio.to_thread(backfill, config, queues)
    assert again.returncode == 0, again.stderr
    await run_until_idle(config, queues, **FAULTY)

    assert etags(s3_clients["china"], dst) == etags(s3_clients["global"], src)
    third = await asyncio.to_thread(backfill, config, queues)
    assert json.loads(third.stdout)["enqueued"]["jobs"] == {}  # nothing left to do
    assert dead_letters(sqs_global, queues) == {}


def with_route(config: Path, src: str, dst: str) -> str:
    return config.read_text() + route_toml("default", src, dst)
