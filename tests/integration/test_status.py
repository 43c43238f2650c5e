"""`s3ferry status` reports what is queued, in flight and dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def status(config_path: Path, queues: Any) -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-m", "s3ferry", "status", "--config", str(config_path),
         "--queue-url", queues.queue_url, "--dlq-url", queues.dlq_url, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    parsed: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return parsed


def test_status_counts_queued_in_flight_and_dead_letters(
        config_path: Path, queues: Any, sqs_global: Any) -> None:
    for i in range(5):
        sqs_global.send_message(QueueUrl=queues.queue_url, MessageBody=f"job {i}")
    sqs_global.send_message(QueueUrl=queues.dlq_url, MessageBody="dead")
    taken = sqs_global.receive_message(QueueUrl=queues.queue_url, MaxNumberOfMessages=2,
                                       VisibilityTimeout=60)["Messages"]

    state = status(config_path, queues)

    assert state["queued"] == 5 - len(taken)
    assert state["in_flight"] == len(taken)
    assert state["dead_letters"] == 1


def test_status_without_a_queue_is_a_clear_error(config_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "s3ferry", "status", "--config",
                          str(config_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert "QUEUE_URL" in run.stderr
