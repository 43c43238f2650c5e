"""The worker as a process: killed mid-upload it resumes; SIGTERM drains and exits 0;
/metrics tells what happened; logs carry no secrets."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.jobs import encode, encode_bundle
from common.limits import MIB
from common.metrics import WorkerMetrics
from s3ferry.localbed import LocalBed, free_port
from tests.integration.harness import (
    body,
    copy_job,
    dead_letters,
    drain_queue,
    run_until_idle,
    send,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]


def parts_uploaded(client: Any, bucket: str, key: str) -> int:
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        if upload["Key"] == key:
            parts = client.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            return len(parts.get("Parts", []))
    return 0


async def test_killed_mid_upload_the_redelivered_job_resumes_the_upload(
        config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any, tmp_path: Path) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    data = os.urandom(160 * MIB)
    s3_clients["global"].put_object(Bucket=src, Key="huge.bin", Body=data)
    send(sqs_global, queues, [copy_job("global", src, "huge.bin", "china", dst)])
    settings = {"part_size": 5 * MIB, "multipart_threshold": 5 * MIB, "max_parts": 1,
                "visibility_timeout": 10}

    with worker_process(config_path, queues, tmp_path / "w1.log", port=free_port(),
                        **settings) as proc:
        wait_for(lambda: parts_uploaded(s3_clients["china"], dst, "huge.bin") >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done_before_restart = parts_uploaded(s3_clients["china"], dst, "huge.bin")
    assert 3 <= done_before_restart < 32, "the upload must be left half done"

    metrics = WorkerMetrics()
    summary = await run_until_idle(config_path, queues, metrics=metrics, **settings)

    assert summary.results["copied"] == 1
    assert metrics.uploads_resumed._value.get() == 1
    assert metrics.parts_reused._value.get() >= done_before_restart
    assert body(s3_clients["china"], dst, "huge.bin") == data
    assert s3_clients["china"].list_multipart_uploads(Bucket=dst).get("Uploads", []) == []
    assert dead_letters(sqs_global, queues) == {}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.mark.parametrize("bundled", [False, True], ids=["a-message-per-job", "one-bundle"])
async def test_sigterm_drains_exits_0_and_loses_nothing(
        bed: LocalBed, config_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any, tmp_path: Path, bundled: bool) -> None:
    src, dst = make_bucket("global"), make_bucket("rclone")
    payloads = {f"obj-{i}.bin": os.urandom(12 * MIB + i) for i in range(6)}
    for key, data in payloads.items():
        s3_clients["global"].put_object(Bucket=src, Key=key, Body=data,
                                        Metadata={"n": key})
    jobs = [copy_job("global", src, k, "rclone", dst) for k in payloads]
    # one bundle: stopped mid-way, the whole message comes back and its done jobs are skipped
    send(sqs_global, queues, [encode_bundle([encode(j) for j in jobs])] if bundled else jobs)
    port = free_port()
    log = tmp_path / "worker.log"

    with worker_process(config_path, queues, log, port=port, max_jobs=2, max_parts=1,
                        part_size=5 * MIB, multipart_threshold=5 * MIB,
                        drain_seconds=0.2) as proc:
        metrics = wait_for(lambda: _copied_at_least(port, 1), timeout=120, every=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    assert metrics[("s3ferry_bytes_copied_total", (("route", "default"),))] > 0
    assert ("s3ferry_copy_duration_seconds_count", (("strategy", "stream_multipart"),)) in metrics
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "shutdown_requested" in events and "worker_stopped" in events
    # the start-up heap was frozen once, before the first receive (common.heap)
    frozen = [line["objects"] for line in lines if line["event"] == "heap_frozen"]
    assert len(frozen) == 1 and frozen[0] > 10_000
    assert events.index("heap_frozen") < events.index("worker_started")
    secret = bed.servers["rclone"].secret_key
    text = log.read_text()
    for forbidden in (secret, "Authorization", "X-Amz-Signature", "X-Amz-Credential"):
        assert forbidden not in text

    # nothing lost: what was not finished is back on the queue and a new worker completes it
    summary = await run_until_idle(config_path, queues, part_size=5 * MIB,
                                   multipart_threshold=5 * MIB)
    assert dead_letters(sqs_global, queues) == {}
    assert drain_queue(sqs_global, queues.queue_url) == []
    for key, data in payloads.items():
        assert body(s3_clients["rclone"], dst, key) == data
    copied_before = sum(1 for line in lines if line["event"] == "job_copied")
    assert copied_before + summary.results["copied"] + summary.results["skipped"] >= 6
    if bundled and copied_before < 6:  # the bundle came back whole: what was done is skipped
        # (a job may also have finished after its log line could be written: skipped too)
        assert summary.results["skipped"] >= copied_before


def _copied_at_least(port: int, n: int) -> Any:
    try:
        samples = scrape(port)
    except OSError:
        return None
    copied = samples.get(("s3ferry_objects_total", (("result", "copied"), ("route", "default"))))
    return samples if copied is not None and copied >= n else None
