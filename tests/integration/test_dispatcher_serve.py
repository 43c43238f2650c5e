"""``s3ferry serve`` as a process: backfills requested with ``s3ferry backfill --server`` land
their jobs, the objects arrive equal, the API refuses what it should with a reason, the token
never reaches the log, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from s3ferry.localbed import free_port
from tests.integration.harness import assert_same_object, run_until_idle, running, wait_for
from tests.integration.test_dispatcher_backfill import AWKWARD, put_many, with_routes

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "intake-token-" + "7" * 24


@contextmanager
def service(config: Path, queues: Any, log: Path,
            port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, S3FERRY_LOG_FORMAT="json", S3FERRY_DISPATCHER__INTAKE_TOKEN=TOKEN)
    argv = [sys.executable, "-m", "s3ferry", "serve", "--config", str(config), "--queue-url",
            queues.queue_url, "--port", str(port), "--no-metrics"]
    with running(argv, env, log) as proc:
        yield proc


def call(url: str, *, method: str = "GET", token: str | None = TOKEN,
         body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return call(f"{base}/healthz", token=None)[0] == 200
        except OSError:
            return False

    wait_for(up, every=0.05)


def backfill_cli(base: str, *flags: str,
                 token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "INTAKE_TOKEN" not in k}
    if token is not None:
        env["S3FERRY_INTAKE_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "s3ferry", "backfill", "--server", base,
                           *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def route_toml(src: str, dst: str) -> str:
    return f"""
[routes.served]
source = {{ endpoint = "global", bucket = "{src}", prefix = "in/" }}
[[routes.served.destinations]]
endpoint = "china"
bucket = "{dst}"
prefix = "out/"
"""


@pytest.mark.timeout(600)
async def test_backfills_requested_from_a_running_service(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    objects = {f"in/{k}": k.encode() * 3 for k in AWKWARD}
    objects |= {"in/empty": b"", "in/big.bin": os.urandom(3 * 1024 * 1024 + 5),
                "in/" + "k" * 1020: b"long key"}  # 1,024 bytes as out/...
    put_many(s3_clients["global"], src, objects)
    config = with_routes(config_path, tmp_path, route_toml(src, dst))
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with service(config, queues, log, port) as proc:
        healthy(base, proc, log)

        # Refusals, each with its reason, and nothing enqueued by them.
        assert call(f"{base}/v1/backfills", token=None)[0] == 401
        status, answer = call(f"{base}/v1/backfills", method="POST", token="wrong" * 5, body={})
        assert (status, answer["error"]) == (401, "missing or wrong bearer token")
        status, answer = call(f"{base}/v1/backfills", method="POST", body={"routes": ["nope"]})
        assert status == 400 and "unknown route(s) nope" in answer["error"]
        status, answer = call(f"{base}/v1/backfills", method="POST", body={"compare": "md5"})
        assert status == 400 and answer["error"].startswith("compare:")
        status, answer = call(f"{base}/v1/backfills", method="POST", body={"queue_url": "x"})
        assert status == 400 and "queue_url" in answer["error"]
        status, answer = call(f"{base}/v1/backfills", method="POST", raw=b"{not json")
        assert status == 400 and "not JSON" in answer["error"]
        assert call(f"{base}/v1/backfills/0123")[0] == 404
        refused = backfill_cli(base, token="wrong-token-0123456789")
        assert refused.returncode == 2 and "missing or wrong bearer token" in refused.stderr
        assert backfill_cli(base, token=None).returncode == 2

        dry = backfill_cli(base, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["would_enqueue"]["jobs"] == {"copy": len(objects)}

        done = backfill_cli(base, "--route", "served")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["enqueued"]["jobs"] == {"copy": len(objects)}
        assert summary["routes"] == ["served"]

        worker = await run_until_idle(config, queues)
        assert worker.results["copied"] == len(objects)
        for key in objects:
            assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key,
                               dst_key="out/" + key[len("in/"):])

        again = backfill_cli(base)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["enqueued"]["jobs"] == {}

        accepted = backfill_cli(base, "--no-wait", "--dry-run")
        assert accepted.returncode == 0, accepted.stderr
        run_id = json.loads(accepted.stdout)["id"]
        status, run = call(f"{base}/v1/backfills/{run_id}?wait=30")
        assert (status, run["state"]) == (200, "done")
        status, listed = call(f"{base}/v1/backfills")
        assert listed["backfills"][0]["id"] == run_id
        assert len(listed["backfills"]) == 4

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert TOKEN not in text and "Bearer" not in text
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    assert events.count("intake_backfill_accepted") == 4
    assert events.count("intake_refused") == 3
    assert events[-1] == "serve_stopped"
    # the start-up heap was frozen once, before the port was announced (common.heap)
    assert events.count("heap_frozen") == 1
    assert events.index("heap_frozen") < events.index("serve_started")
