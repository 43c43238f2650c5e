"""The worker's own CPU per job, without an emulator's noise: ``python -m bench.jobcost``.

W4b's wall time is the emulator's (one interpreter copying 5,000 objects at ~2 ms of CPU
each); what s3ferry adds is its CPU on the other core. That CPU varies by 20% from run to
run in the bench, so changes to it are measured here instead:

* the worker (``worker.main.run_worker``: consumer, replicator, wire, log lines, metrics)
  runs in this process, on the jobs a backfill would send for a same-store copy of N small
  objects, in bundles of 100;
* its queue is an in-memory stand-in for SQS (receive, delete, attributes: each answers
  after 2 ms), the one part of the worker not measured here;
* its S3 is a canned server in a child process (``--serve``): every request gets a 200
  CopyObject answer with the listed ETag, on keep-alive HTTP/1.1.

It prints one JSON line: jobs, results, CPU seconds of this process from the worker's start
(client opening included, ~0.1 s) and CPU milliseconds per job. Not a test, not the bench:
a tool for comparing two versions of the worker on one machine, run after run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3ferry.localbed import write_private

ETAG = '"0123456789abcdef0123456789abcdef"'
BUNDLE = 100
QUEUE_DELAY_SECONDS = 0.002
_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult><LastModified>'
         f"2026-11-23T00:00:00.000Z</LastModified><ETag>{ETAG}</ETag></CopyObjectResult>")
ANSWER = (f"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nx-amz-request-id: bench\r\n"
          f"Content-Length: {len(_BODY)}\r\n\r\n{_BODY}").encode()


class _Canned(asyncio.Protocol):
    """Answers every request (head, then Content-Length bytes of body) with :data:`ANSWER`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(ANSWER)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Canned, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


class MemoryQueue:
    """SQS as the consumer uses it, in memory: the bundles, then nothing."""

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = bodies
        self.sent = 0
        self.deleted = 0

    async def receive_message(self, *, MaxNumberOfMessages: int,
                              **_: Any) -> dict[str, Any]:
        await asyncio.sleep(QUEUE_DELAY_SECONDS)
        messages: list[dict[str, Any]] = []
        while self.bodies and len(messages) < MaxNumberOfMessages:
            self.sent += 1
            messages.append({"MessageId": str(self.sent), "ReceiptHandle": f"r{self.sent}",
                             "Body": self.bodies.pop(0),
                             "Attributes": {"ApproximateReceiveCount": "1"}})
        return {"Messages": messages}

    async def delete_message_batch(self, *, Entries: list[dict[str, str]],
                                   **_: Any) -> dict[str, Any]:
        await asyncio.sleep(QUEUE_DELAY_SECONDS)
        self.deleted += len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    async def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": str(len(self.bodies)),
                               "ApproximateNumberOfMessagesNotVisible": "0",
                               "ApproximateNumberOfMessagesDelayed": "0"}}

    async def change_message_visibility_batch(self, **_: Any) -> dict[str, Any]:
        return {"Successful": [], "Failed": []}


def bundles(jobs: int) -> list[str]:
    from common.jobs import CopyJob, CopyOptions, DestinationRef, SourceRef, encode, encode_bundle
    bodies = [encode(CopyJob(
        route="bench",
        source=SourceRef(endpoint="store", bucket="src-bucket", key=f"small/{i:06d}",
                         size=16384, etag=ETAG, storage_class="STANDARD"),
        destination=DestinationRef(endpoint="store", bucket="dst-bucket",
                                   key=f"small/{i:06d}"),
        options=CopyOptions(destination_absent=True))) for i in range(jobs)]
    return [encode_bundle(bodies[i:i + BUNDLE], limit=BUNDLE)
            for i in range(0, jobs, BUNDLE)]


CONFIG = """
[endpoints.store]
endpoint_url = "http://127.0.0.1:{port}"
region = "us-east-1"
addressing_style = "path"
server_side_copy = true
sign_payload = false
credentials = {{ kind = "static", access_key_id = "BENCH", secret_access_key = "bench" }}

[routes.bench]
source = {{ endpoint = "store", bucket = "src-bucket" }}
destinations = [{{ endpoint = "store", bucket = "dst-bucket" }}]
"""


def measure(jobs: int, port: int, workdir: Path) -> dict[str, Any]:
    from common.clients import ClientPool
    from common.logs import configure_logging
    from common.metrics import WorkerMetrics
    from common.settings import load_settings
    from worker.main import run_worker

    config = workdir / "jobcost.toml"
    write_private(config, CONFIG.format(port=port))
    settings = load_settings(config, queue_url="memory", dlq_url="memory-dlq",
                             queue_endpoint="store")
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"exit_when_idle": True, "idle_polls": 1})})
    queue = MemoryQueue(bundles(jobs))
    real_get = ClientPool.get

    async def get(self: ClientPool, name: str, service: str = "s3") -> Any:
        return queue if service == "sqs" else await real_get(self, name, service)

    ClientPool.get = get  # type: ignore[method-assign]
    configure_logging(fmt="json", level="info")
    cpu, wall = time.process_time(), time.monotonic()
    summary = asyncio.run(run_worker(settings, metrics=WorkerMetrics()))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"jobs": jobs, "results": dict(summary.results), "deleted_messages": queue.deleted,
            "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "cpu_ms_per_job": round(1000 * cpu / jobs, 4)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobcost",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, default=Path("/dev/null"),
                        help="where the worker's log lines go (default: nowhere)")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve())
        return 0
    server = subprocess.Popen([sys.executable, "-m", "bench.jobcost", "--serve"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="s3ferry-jobcost-") as tmp, \
                args.log.open("w") as log:
            stderr, sys.stderr = sys.stderr, log
            try:
                result = measure(args.jobs, port, Path(tmp))
            finally:
                sys.stderr = stderr
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
