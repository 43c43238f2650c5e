"""``s3ferry demo``: copy a bucket from the global partition to China on this machine.

The whole path of a real deployment, on local servers: two LocalStack partitions (global =
us-east-1, china = cn-north-1, different keys, nothing shared), a job queue and a
dead-letter queue on the global side, a source bucket seeded with awkward objects, one copy
job per object, and two real worker processes (``python -m worker``) that copy until the
queue is empty and serve ``/metrics`` while they run.

What is guaranteed:

- The demo checks the result itself, not through the workers: every destination object is
  read back and compared with its source (sha256 of the bytes, user metadata without the
  ``s3ferry-`` fingerprint keys, content headers, tags), and the dead-letter queue must be
  empty. It exits 0 only if all of that holds and no job failed; otherwise it lists what
  differs and exits 1.
- The servers and workers are stopped at the end whatever happens (an error, Ctrl-C,
  SIGTERM); on Linux, if the demo itself is killed, the kernel stops them. ``--keep``
  leaves the servers up until Ctrl-C so a person can look.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from common.fingerprint import user_metadata
from common.jobs import CopyJob, DestinationRef, SourceRef, encode
from common.limits import KIB, MIB, SQS_MAX_BATCH
from s3ferry.localbed import LocalBed, LocalBedError, LocalServer, free_port
from worker.consumer import Summary

SOURCE = "global"
DESTINATION = "china"
SOURCE_BUCKET = "ferry-demo-source"
DEST_BUCKET = "ferry-demo-china"
QUEUE = "ferry-demo-jobs"
WORKERS = 2
PART_SIZE = 8 * MIB
DEFAULT_SMALL_OBJECTS = 40
SEED_THREADS = 8
WORKER_DEADLINE_SECONDS = 600.0
WORKER_STOP_SECONDS = 15.0
SCRAPE_EVERY_SECONDS = 1.0
POLL_SECONDS = 0.2

HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
           "ContentLanguage")
SMALL_SIZES = (0, 1, 17, 1000, 4 * KIB, 64 * KIB, 300 * KIB)
RICH_HEADERS: Mapping[str, str] = {
    "ContentType": "application/x-ferry; charset=utf-8",
    "CacheControl": "max-age=3600, public",
    "ContentDisposition": 'attachment; filename="report.bin"',
    "ContentLanguage": "de-CH",
}
RICH_METADATA: Mapping[str, str] = {"owner": "data-team", "pipeline": "nightly",
                                    "checked-by": "s3ferry demo"}
RICH_TAGS: Mapping[str, str] = {"project": "ferry", "cost-center": "42", "space key": "a+b"}
AWKWARD_KEYS = (
    "awkward/with space/file name.txt",
    "awkward/plus+sign/a+b=c.txt",
    "awkward/percent%2F/100% done%20.txt",
    "awkward/unicode/日本語/über/😀.txt",
    "awkward/long/" + "x" * 990 + "/" + "é" * 10,  # 1,024 bytes: S3's limit
)


# -- what to copy (pure) -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DemoObject:
    """One source object; its bytes are derived from its key, so a run is reproducible."""

    key: str
    size: int
    headers: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    uploaded_in_parts: bool = False  # a source with a multipart ETag, as big objects have

    def body(self) -> bytes:
        return random.Random(self.key).randbytes(self.size)

    def write_args(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(self.headers)
        if self.metadata:
            args["Metadata"] = dict(self.metadata)
        if self.tags:
            args["Tagging"] = urllib.parse.urlencode(self.tags)
        return args


def _rich(key: str, size: int, **extra: Any) -> DemoObject:
    return DemoObject(key=key, size=size, headers=RICH_HEADERS, metadata=RICH_METADATA,
                      tags=RICH_TAGS, **extra)


def demo_objects(small: int) -> list[DemoObject]:
    """Mixed sizes around the copy strategies' boundaries, awkward keys, rich metadata."""
    objects = []
    for i in range(small):
        size = SMALL_SIZES[i % len(SMALL_SIZES)]
        key = f"small/{i:04d}-{size}.bin"
        objects.append(_rich(key, size) if i % 3 == 0 else DemoObject(
            key=key, size=size, headers={"ContentType": "application/octet-stream"}))
    objects += [_rich(key, 1024) for key in AWKWARD_KEYS]
    objects += [
        _rich("medium/just-under-1-mib.bin", MIB - 1),
        DemoObject(key="medium/one-mib.json", size=MIB,
                   headers={"ContentType": "application/json", "CacheControl": "no-cache"}),
        _rich("medium/just-over-1-mib.bin", MIB + 1),
        _rich("large/just-over-5-mib.bin", 5 * MIB + 1),
        _rich("large/multipart-24-mib.bin", 24 * MIB),
        _rich("large/uploaded-in-parts-20-mib.bin", 20 * MIB + 3, uploaded_in_parts=True),
    ]
    return objects


# -- the run's shape -----------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    workdir: Path | None
    keep: bool
    objects: int


@dataclass(frozen=True, kw_only=True)
class Clients:
    """Plain boto3 clients: the demo's own view of the servers, independent of the worker."""

    source: Any
    destination: Any
    sqs: Any


@dataclass(frozen=True, kw_only=True)
class Queues:
    queue_url: str
    dlq_url: str


@dataclass(kw_only=True)
class WorkerProcess:
    index: int
    popen: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    summary_path: Path
    scrapes: int = 0
    last_copied: int | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass(kw_only=True)
class Totals(Summary):
    """The workers' summary JSON files, added together."""

    unreported: list[str] = field(default_factory=list)  # workers that wrote no summary


@dataclass(frozen=True)
class Difference:
    """One object whose copy differs from its source, in which fields and how."""

    key: str
    fields: frozenset[str]
    text: str


BYTE_FIELDS = frozenset({"missing", "size", "sha256"})
META_FIELDS = frozenset({"missing", "headers", "metadata", "tags"})


@dataclass(kw_only=True)
class Outcome:
    objects: int
    bytes_seeded: int
    totals: Totals
    workers: list[WorkerProcess]
    worker_codes: list[int | None]
    mismatches: list[Difference]
    dlq_messages: int
    queue_left: int
    timings: dict[str, float]
    drained_after: float | None  # seconds from starting the workers to an empty queue
    wall: float

    def equal(self, fields: frozenset[str]) -> int:
        """How many objects have no difference in ``fields``."""
        return self.objects - sum(1 for d in self.mismatches if fields & d.fields)


# -- servers, queues, buckets --------------------------------------------------------------

def _client(server: LocalServer, service: str) -> Any:
    # The local servers take static keys: a caller's AWS_PROFILE (perhaps one that does not
    # exist here) must not matter, and botocore reads it even when keys are given.
    core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
    session: Any = boto3.session.Session(botocore_session=core)
    config = server.boto_config(max_pool_connections=2 * SEED_THREADS)
    return session.client(service, config=config, **server.client_kwargs())


@contextlib.contextmanager
def open_clients(bed: LocalBed) -> Iterator[Clients]:
    clients = Clients(source=_client(bed.servers[SOURCE], "s3"),
                      destination=_client(bed.servers[DESTINATION], "s3"),
                      sqs=_client(bed.servers[SOURCE], "sqs"))
    try:
        yield clients
    finally:
        for client in (clients.source, clients.destination, clients.sqs):
            client.close()


def create_bucket(client: Any, server: LocalServer, bucket: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if server.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": server.region}
    client.create_bucket(**kwargs)


def create_queues(sqs: Any) -> Queues:
    # No redrive policy: sending a job to the dead-letter queue is the worker's decision.
    attributes = {"VisibilityTimeout": "30"}
    queue_url = sqs.create_queue(QueueName=QUEUE, Attributes=attributes)["QueueUrl"]
    dlq_url = sqs.create_queue(QueueName=f"{QUEUE}-dlq", Attributes=attributes)["QueueUrl"]
    return Queues(queue_url=str(queue_url), dlq_url=str(dlq_url))


def queue_depth(sqs: Any, url: str) -> int:
    """Messages visible, in flight or delayed (SQS's approximate counts)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs.get(name, "0")) for name in names)


# -- seeding -------------------------------------------------------------------------------

def _parallel(fn: Callable[[DemoObject], Any], objects: Iterable[DemoObject]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=SEED_THREADS, thread_name_prefix="demo") as pool:
        return list(pool.map(fn, objects))


def seed_one(client: Any, obj: DemoObject) -> None:
    if obj.uploaded_in_parts:
        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                use_threads=False)
        client.upload_fileobj(io.BytesIO(obj.body()), SOURCE_BUCKET, obj.key,
                              ExtraArgs=obj.write_args(), Config=config)
    else:
        client.put_object(Bucket=SOURCE_BUCKET, Key=obj.key, Body=obj.body(),
                          **obj.write_args())


def list_source(client: Any) -> list[dict[str, Any]]:
    """The source as a dispatcher sees it: key, size and ETag of every object."""
    paginator = client.get_paginator("list_objects_v2")
    return [item for page in paginator.paginate(Bucket=SOURCE_BUCKET)
            for item in page.get("Contents", [])]


def jobs_for(listing: Iterable[Mapping[str, Any]]) -> list[CopyJob]:
    return [CopyJob(
        source=SourceRef(endpoint=SOURCE, bucket=SOURCE_BUCKET, key=item["Key"],
                         size=item["Size"], etag=item["ETag"]),
        destination=DestinationRef(endpoint=DESTINATION, bucket=DEST_BUCKET, key=item["Key"]),
    ) for item in listing]


def send_jobs(sqs: Any, queue_url: str, jobs: Sequence[CopyJob]) -> None:
    for start in range(0, len(jobs), SQS_MAX_BATCH):
        batch = [{"Id": str(i), "MessageBody": encode(job)}
                 for i, job in enumerate(jobs[start:start + SQS_MAX_BATCH])]
        failed = sqs.send_message_batch(QueueUrl=queue_url, Entries=batch).get("Failed")
        if failed:
            raise RuntimeError(f"SendMessageBatch refused {len(failed)} jobs: {failed}")


# -- workers -------------------------------------------------------------------------------

# Run by the worker's interpreter before it becomes the worker: ask the kernel for SIGTERM
# when the demo dies (PR_SET_PDEATHSIG = 1), so a killed demo leaves no worker behind.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def worker_env() -> dict[str, str]:
    """The caller's environment without its S3FERRY_* and AWS profile, plus the demo's tuning.

    The local endpoints have static keys; botocore would still read AWS_PROFILE and fail
    if that profile does not exist on this machine.
    """
    dropped = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("S3FERRY_") and k not in dropped}
    env.update({
        "S3FERRY_WORKER__PART_SIZE": str(PART_SIZE),
        "S3FERRY_WORKER__MULTIPART_THRESHOLD": str(PART_SIZE),
        "S3FERRY_WORKER__MAX_JOBS": "8",
        "S3FERRY_WORKER__MAX_PARTS": "8",
        "S3FERRY_WORKER__WAIT_TIME_SECONDS": "1",
        "S3FERRY_WORKER__IDLE_POLLS": "2",
        "S3FERRY_WORKER__VISIBILITY_TIMEOUT": "30",
        "S3FERRY_WORKER__DRAIN_SECONDS": "5",
        "S3FERRY_WORKER__REQUEST_TIMEOUT": "60",
        "S3FERRY_METRICS_HOST": "127.0.0.1",
        "S3FERRY_LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def worker_argv(config: Path, queues: Queues, port: int, summary: Path) -> list[str]:
    argv = [sys.executable, "-m", "worker", "--config", str(config),
            "--queue-url", queues.queue_url, "--dlq-url", queues.dlq_url,
            "--exit-when-idle", "--summary-json", str(summary), "--metrics-port", str(port)]
    # PR_SET_PDEATHSIG follows the forking thread: only the main thread may rely on it.
    if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    return argv


def start_workers(workdir: Path, config: Path, queues: Queues) -> list[WorkerProcess]:
    workers = []
    for index in range(1, WORKERS + 1):
        port = free_port()
        log_path = workdir / f"worker-{index}.log"
        summary = workdir / f"worker-{index}-summary.json"
        summary.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                worker_argv(config, queues, port, summary), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=worker_env(), cwd=workdir)
        workers.append(WorkerProcess(index=index, popen=popen, metrics_port=port,
                                     log_path=log_path, summary_path=summary))
    return workers


_COPIED = re.compile(r'^s3ferry_objects_total\{[^}]*result="copied"[^}]*\}\s+(\S+)$', re.M)


def scrape(worker: WorkerProcess) -> None:
    """Read the worker's /metrics; remember how many copies it reported there."""
    try:
        with urllib.request.urlopen(worker.metrics_url, timeout=1) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return  # not serving yet, or already gone
    worker.scrapes += 1
    worker.last_copied = int(sum(float(v) for v in _COPIED.findall(text)))


@dataclass(kw_only=True)
class Watch:
    """What the demo sees while the workers run: their /metrics, and when the queue empties."""

    workers: Sequence[WorkerProcess]
    sqs: Any
    queue_url: str
    began: float = field(default_factory=time.monotonic)
    drained_after: float | None = None
    codes: list[int | None] = field(default_factory=list)
    _next_scrape: float = 0.0

    def running(self) -> bool:
        return any(w.popen.poll() is None for w in self.workers)

    def tick(self) -> None:
        now = time.monotonic()
        if self.drained_after is None and self._queue_empty():
            self.drained_after = now - self.began
        if now >= self._next_scrape:
            for worker in self.workers:
                if worker.popen.poll() is None:
                    scrape(worker)
            self._next_scrape = now + SCRAPE_EVERY_SECONDS

    def _queue_empty(self) -> bool:
        try:
            return queue_depth(self.sqs, self.queue_url) == 0
        except (BotoCoreError, ClientError):
            return False  # one failed look is no reason to stop watching

    def wait(self, deadline: float) -> list[int | None]:
        """Until every worker has exited (idle queue) or the deadline passes."""
        while self.running() and time.monotonic() < deadline:
            self.tick()
            time.sleep(POLL_SECONDS)
        return [w.popen.poll() for w in self.workers]


def stop_workers(workers: Iterable[WorkerProcess]) -> None:
    """SIGTERM (a clean drain), then SIGKILL whatever is left; always reaps."""
    running = [w.popen for w in workers if w.popen.poll() is None]
    for popen in running:
        popen.terminate()
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    for popen in running:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def add_summaries(workers: Iterable[WorkerProcess]) -> Totals:
    totals = Totals()
    for worker in workers:
        try:
            totals.add(json.loads(worker.summary_path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            totals.unreported.append(
                f"worker {worker.index} wrote no summary (see {worker.log_path})")
    return totals


# -- independent verification --------------------------------------------------------------

def _sha256(client: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(chunk_size=MIB):
        digest.update(chunk)
    return digest.hexdigest()


def describe(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """What a user compares: size, sha256, headers, user metadata, tags (None: missing)."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {
        "size": head["ContentLength"],
        "sha256": _sha256(client, bucket, key),
        "headers": {h: head.get(h) for h in HEADERS},
        "metadata": {k.lower(): v for k, v in user_metadata(head.get("Metadata", {})).items()},
        "tags": sorted((t["Key"], t["Value"]) for t in tags),
    }


def shown(key: str, limit: int = 72) -> str:
    """A key as printed: quoted, long ones cut in the middle."""
    if len(key) <= limit:
        return repr(key)
    half = limit // 2
    return f"{key[:half]!r}...{key[-half:]!r} ({len(key.encode())} bytes)"


def compare(clients: Clients, key: str) -> Difference | None:
    """None when the copy equals its source, else what differs."""
    src = describe(clients.source, SOURCE_BUCKET, key)
    dst = describe(clients.destination, DEST_BUCKET, key)
    if src is None or dst is None:
        where = "destination" if dst is None else "source"
        return Difference(key, frozenset({"missing"}), f"{shown(key)}: missing at the {where}")
    fields = [name for name in ("size", "sha256", "headers", "metadata", "tags")
              if src[name] != dst[name]]
    if not fields:
        return None
    text = "; ".join(f"{name}: {src[name]!r} != {dst[name]!r}" for name in fields)
    return Difference(key, frozenset(fields), f"{shown(key)}: {text}")


def verify_all(clients: Clients, objects: Sequence[DemoObject]) -> list[Difference]:
    found = _parallel(lambda obj: compare(clients, obj.key), objects)
    return [diff for diff in found if diff is not None]


# -- report --------------------------------------------------------------------------------

def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"


def _worker_line(worker: WorkerProcess, code: int | None) -> str:
    seen = (f"scraped {worker.scrapes}x, copied={worker.last_copied} at the last scrape"
            if worker.scrapes else "never scraped")
    state = "exit 0" if code == 0 else f"exit {code}" if code is not None else "did not exit"
    return f"{worker.metrics_url} ({seen}; {state}; log {worker.log_path.name})"


def _rate(n: int, seconds: float | None) -> str:
    return f"{n / 1e6 / seconds:.1f} MB/s" if seconds else "- MB/s"


def _timing_rows(outcome: Outcome) -> list[tuple[str, str]]:
    times, copied = outcome.timings, outcome.totals.bytes_copied
    drained = outcome.drained_after
    return [
        ("queue drained after", f"{drained:.1f} s  ({_rate(copied, drained)}, {WORKERS} "
                                "workers, from their start)" if drained else "never"),
        ("copy phase wall time", f"{times.get('copy', 0.0):.1f} s  "
                                 f"({_rate(copied, times.get('copy'))}, incl. start-up "
                                 "and idle exit)"),
        ("demo wall time", f"{outcome.wall:.1f} s  ("
                           + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ")"),
    ]


def _verdict(outcome: Outcome, label: str, fields: frozenset[str],
             what: str) -> tuple[str, str]:
    equal = outcome.equal(fields)
    verdict = "yes" if equal == outcome.objects else "NO"
    return label, f"{verdict}  ({equal}/{outcome.objects} objects: {what})"


def render(outcome: Outcome) -> str:
    """The human-readable summary table."""
    t = outcome.totals
    rows: list[tuple[str, str]] = [
        ("objects seeded", f"{outcome.objects}  ({_mib(outcome.bytes_seeded)})"),
        ("copied", f"{t.results['copied']}  ({_mib(t.bytes_copied)})"),
        ("  by strategy", _counts(t.strategies)),
        ("skipped", f"{t.results['skipped']}  ({_counts(t.skipped)})"
         if t.skipped else str(t.results["skipped"])),
        ("retried", str(t.results["retried"])),
        ("failed", str(t.results["failed"])),
        ("verified by worker", _counts(t.verified)),
        ("dead letters", f"{outcome.dlq_messages}  ({_counts(t.dead_letters)})"
         if t.dead_letters else str(outcome.dlq_messages)),
        ("jobs left on queue", str(outcome.queue_left)),
        *_timing_rows(outcome),
    ]
    rows += [(f"worker {w.index} /metrics", _worker_line(w, code))
             for w, code in zip(outcome.workers, outcome.worker_codes, strict=True)]
    rows += [_verdict(outcome, "every object byte-equal", BYTE_FIELDS, "size and sha256"),
             _verdict(outcome, "metadata and tags equal", META_FIELDS,
                      "headers, user metadata, tags")]
    width = max(len(label) for label, _ in rows) + 2
    title = f"s3ferry demo: {SOURCE} -> {DESTINATION}"
    lines = [title, "=" * len(title)] + [f"{label:<{width}}{value}" for label, value in rows]
    return "\n".join(lines)


def problems(outcome: Outcome) -> list[str]:
    """Everything that makes the run a failure; empty means exit 0."""
    out = list(outcome.totals.unreported) + [d.text for d in outcome.mismatches]
    if failed := outcome.totals.results["failed"]:
        out.append(f"{failed} job(s) failed")
    if outcome.dlq_messages:
        out.append(f"{outcome.dlq_messages} job(s) in the dead-letter queue")
    if outcome.queue_left:
        out.append(f"{outcome.queue_left} job(s) still on the queue")
    out += [f"worker {w.index} ended with {code} (see {w.log_path})"
            for w, code in zip(outcome.workers, outcome.worker_codes, strict=True) if code != 0]
    return out


# -- the run -------------------------------------------------------------------------------

def say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def phase(timings: dict[str, float], name: str, text: str) -> Iterator[None]:
    say(f"-> {text} ...")
    began = time.monotonic()
    yield
    timings[name] = time.monotonic() - began
    say(f"   done in {timings[name]:.1f} s")


def seed(bed: LocalBed, clients: Clients, objects: Sequence[DemoObject]) -> Queues:
    """Queues and buckets on their partitions, then the source objects, in parallel."""
    create_bucket(clients.source, bed.servers[SOURCE], SOURCE_BUCKET)
    create_bucket(clients.destination, bed.servers[DESTINATION], DEST_BUCKET)
    queues = create_queues(clients.sqs)
    _parallel(lambda obj: seed_one(clients.source, obj), objects)
    return queues


def copy(workdir: Path, config: Path, queues: Queues, sqs: Any,
         workers: list[WorkerProcess]) -> Watch:
    """Start the workers (registered in ``workers`` at once, for cleanup) and wait."""
    watch = Watch(workers=workers, sqs=sqs, queue_url=queues.queue_url)
    workers += start_workers(workdir, config, queues)
    for worker in workers:
        say(f"   worker {worker.index}: pid {worker.popen.pid}, {worker.metrics_url}, "
            f"log {worker.log_path}")
    watch.codes = watch.wait(time.monotonic() + WORKER_DEADLINE_SECONDS)
    stop_workers(workers)  # only acts on a worker that missed the deadline
    return watch


def run(bed: LocalBed, workdir: Path, small: int, workers: list[WorkerProcess]) -> Outcome:
    """Every phase, timed; ``workers`` receives the worker processes as soon as they start."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    with phase(timings, "start", "starting the global and china partitions (LocalStack)"):
        bed.start()
    config = workdir / "s3ferry.toml"
    config.write_text(bed.config_toml(), encoding="utf-8")
    with open_clients(bed) as clients:
        outcome = ferry(bed, clients, workdir, demo_objects(small), workers, timings)
    outcome.wall = time.monotonic() - began
    return outcome


def ferry(bed: LocalBed, clients: Clients, workdir: Path, objects: Sequence[DemoObject],
          workers: list[WorkerProcess], timings: dict[str, float]) -> Outcome:
    """Seed, enqueue, copy with the workers, verify: the demo proper."""
    total = sum(o.size for o in objects)
    with phase(timings, "seed", f"seeding {len(objects)} objects ({_mib(total)}) on {SOURCE}"):
        queues = seed(bed, clients, objects)
    with phase(timings, "enqueue", "listing the source, one copy job per object"):
        send_jobs(clients.sqs, queues.queue_url, jobs_for(list_source(clients.source)))
    with phase(timings, "copy", f"{WORKERS} workers copying {SOURCE} -> {DESTINATION}"):
        watch = copy(workdir, workdir / "s3ferry.toml", queues, clients.sqs, workers)
    with phase(timings, "verify", "verifying every object independently"):
        mismatches = verify_all(clients, objects)
    return Outcome(objects=len(objects), bytes_seeded=total, totals=add_summaries(workers),
                   workers=workers, worker_codes=watch.codes, mismatches=mismatches,
                   dlq_messages=queue_depth(clients.sqs, queues.dlq_url),
                   queue_left=queue_depth(clients.sqs, queues.queue_url), timings=timings,
                   drained_after=watch.drained_after, wall=0.0)


def show_endpoints(bed: LocalBed, workdir: Path) -> None:
    say("\nServers left running (Ctrl-C to stop them):")
    for name, server in bed.servers.items():
        say(f"  {name:<7} {server.endpoint_url}  region {server.region}  "
            f"keys {server.access_key} / {server.secret_key}")
    server = bed.servers[DESTINATION]
    say(f"  config  {workdir / 's3ferry.toml'}\n  try:    AWS_ACCESS_KEY_ID={server.access_key} "
        f"AWS_SECRET_ACCESS_KEY={server.secret_key} aws --endpoint-url "
        f"{server.endpoint_url} --region {server.region} s3 ls --recursive s3://{DEST_BUCKET}")


def wait_for_interrupt() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


# -- entry point ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry demo",
        description="Start two local partitions (global, china), seed a bucket with awkward "
                    "objects, copy it with two workers through SQS, verify every object "
                    "independently and print a summary. Exit 0 only if every copy is equal.")
    parser.add_argument("--workdir", type=Path,
                        help="where servers' data and all logs go (default: a temporary "
                             "directory, removed after a successful run)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the servers running until Ctrl-C, to look around")
    parser.add_argument("--objects", type=_non_negative, default=DEFAULT_SMALL_OBJECTS,
                        metavar="N", help="how many small objects to seed (default "
                                          f"{DEFAULT_SMALL_OBJECTS}); the large and awkward "
                                          "ones are always there")
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup below, like Ctrl-C


def demo(options: DemoOptions, workdir: Path) -> int:
    bed = LocalBed(workdir, partitions=(SOURCE, DESTINATION), rclone=False)
    workers: list[WorkerProcess] = []
    try:
        outcome = run(bed, workdir, options.objects, workers)
        say("\n" + render(outcome))
        issues = problems(outcome)
        say(f"\nFAILED: {len(issues)} problem(s)" if issues else "\nOK: every object copied, "
            "verified by the workers and again by the demo")
        for line in issues:
            say(f"  - {line}")
        if options.keep:
            show_endpoints(bed, workdir)
            wait_for_interrupt()
        return 1 if issues else 0
    finally:
        stop_workers(workers)
        bed.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = DemoOptions(workdir=args.workdir, keep=args.keep, objects=args.objects)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="s3ferry-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if in_main else None
    code = 1
    try:
        code = demo(options, workdir.resolve())
    except LocalBedError as exc:
        say(f"s3ferry demo: the local servers did not start: {exc}")
    except KeyboardInterrupt:
        say("\ninterrupted: servers and workers stopped")
        code = 130
    except SystemExit as exc:  # SIGTERM, see _raise_on_sigterm
        say("\nterminated: servers and workers stopped")
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _tidy(options, workdir, code)
    return code


def _tidy(options: DemoOptions, workdir: Path, code: int) -> None:
    """Remove our own temporary directory after success; keep logs when they are needed."""
    if options.workdir is None and code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"servers' and workers' logs: {workdir}")
