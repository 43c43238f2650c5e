"""``s3ferry demo``: copy a bucket from the global partition to China on this machine.

The whole path of a real deployment, on local servers: two LocalStack partitions (global =
us-east-1, china = cn-north-1, different keys, nothing shared), a job queue and a
dead-letter queue on the global side, a source bucket seeded with awkward objects, and a
route (global -> china, ``sync_deletes``) in the config file. Then two phases:

1. Backfill: ``s3ferry backfill`` diffs the source and the destination and enqueues copy
   jobs; two real worker processes (``python -m worker``) copy until the queue is empty and
   serve ``/metrics`` while they run.
2. Events: S3 notifications of the source bucket go to an events queue; ``s3ferry events``
   turns them into jobs for two more workers while the demo uploads new objects, overwrites
   one and deletes one, and waits until the destination mirrors the source again.

What is guaranteed:

- The demo checks the result itself, not through the workers: at the end every object in
  the source is read back from both sides and compared (sha256 of the bytes, user metadata
  without the ``s3ferry-`` fingerprint keys, content headers, tags), the destination must
  hold nothing else (the deleted object is gone), the dead-letter queues must be empty and
  a re-run of the backfill (``--dry-run --compare checksum``) must find nothing to do. It
  exits 0 only if all of that holds, no job failed and every process exited 0 (the event
  listener and its workers after SIGTERM); otherwise it lists what differs and exits 1.
- Event mode waits at most 90 s for the destination to mirror the source.
- The servers, workers and listener are stopped at the end whatever happens (an error, Ctrl-C,
  SIGTERM); on Linux, if the demo itself is killed, the kernel stops them. ``--keep``
  leaves the servers up until Ctrl-C so a person can look.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
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
from common.limits import KIB, MIB
from s3ferry.localbed import LocalBed, LocalBedError, LocalServer, free_port, write_private
from worker.summary import Summary

SOURCE = "global"
DESTINATION = "china"
SOURCE_BUCKET = "ferry-demo-source"
DEST_BUCKET = "ferry-demo-china"
QUEUE = "ferry-demo-jobs"
EVENTS_QUEUE = "ferry-demo-events"
ROUTE = "demo"
WORKERS = 2
PART_SIZE = 8 * MIB
DEFAULT_SMALL_OBJECTS = 40
SEED_THREADS = 8
WORKER_DEADLINE_SECONDS = 600.0
BACKFILL_DEADLINE_SECONDS = 300.0
MIRROR_DEADLINE_SECONDS = 90.0
NEW_OBJECTS = 3
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
    salt: str = ""  # another salt, other bytes: an overwrite

    def body(self) -> bytes:
        return random.Random(self.key + self.salt).randbytes(self.size)

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


def event_changes() -> tuple[list[DemoObject], DemoObject, str]:
    """Event mode's changes: new objects (awkward keys), one overwrite, one delete.

    One change per key on purpose: LocalStack gives every S3 event the same ``sequencer``,
    so the listener (rightly, for real S3) takes a second event on a key as a stale one.
    """
    new = [_rich("events/new 1.bin", 1000), _rich("events/ü+1=2 😀.txt", 64 * KIB),
           _rich("events/large-2-mib.bin", 2 * MIB + 1)][:NEW_OBJECTS]
    overwrite = _rich(AWKWARD_KEYS[1], 2048, salt="overwritten")
    return new, overwrite, AWKWARD_KEYS[0]


def routes_toml() -> str:
    """The demo's route: the whole source bucket to China, deletes mirrored."""
    return (f"\n[routes.{ROUTE}]\n"
            f'source = {{ endpoint = "{SOURCE}", bucket = "{SOURCE_BUCKET}" }}\n'
            "sync_deletes = true\n\n"
            f"[[routes.{ROUTE}.destinations]]\n"
            f'endpoint = "{DESTINATION}"\nbucket = "{DEST_BUCKET}"\n')


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


_COPIED = re.compile(r'^s3ferry_objects_total\{[^}]*result="copied"[^}]*\}\s+(\S+)$', re.M)
_ENQUEUED = re.compile(r'^s3ferry_dispatcher_jobs_enqueued_total\{[^}]*\}\s+(\S+)$', re.M)


class DemoError(Exception):
    """A step of the demo itself failed (not a copy): the run cannot go on."""


@dataclass(frozen=True, kw_only=True)
class EventQueues:
    events_url: str
    events_dlq_url: str
    events_arn: str


@dataclass(kw_only=True)
class WorkerProcess:
    """A worker (or the events listener) the demo started, and what its /metrics said."""

    index: int
    popen: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    summary_path: Path
    scrapes: int = 0
    last_copied: int | None = None
    counter: re.Pattern[str] = _COPIED  # the number remembered at each scrape
    counted: str = "copied"

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
class EventPhase:
    """What event mode did: the changes made, the listener's and workers' reports."""

    changes: Mapping[str, int]
    deleted_key: str
    listener: WorkerProcess
    listener_code: int | None
    listener_summary: Mapping[str, Any]
    totals: Totals
    workers: list[WorkerProcess]
    worker_codes: list[int | None]
    mirrored_after: float | None  # seconds from the first change to an equal destination
    events_dlq: int


@dataclass(kw_only=True)
class DemoRun:
    objects: int  # in the source at the end, each compared with its copy
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
    seeded: int = 0
    backfill: Mapping[str, Any] = field(default_factory=dict)  # its JSON summary
    events: EventPhase | None = None
    extras: list[str] = field(default_factory=list)  # at the destination, not at the source
    rerun: Mapping[str, int] | None = None  # jobs a final backfill --dry-run would send

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


def create_event_queues(sqs: Any) -> EventQueues:
    """The queue S3 notifies (and its dead-letter queue, for events nobody can parse)."""
    attributes = {"VisibilityTimeout": "30"}
    url = sqs.create_queue(QueueName=EVENTS_QUEUE, Attributes=attributes)["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"{EVENTS_QUEUE}-dlq", Attributes=attributes)["QueueUrl"]
    arn = str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"])
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": s3_may_send(arn)})
    return EventQueues(events_url=str(url), events_dlq_url=str(dlq), events_arn=arn)


def s3_may_send(queue_arn: str) -> str:
    """The queue policy real S3 needs before it notifies a queue (LocalStack does not)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": queue_arn,
        "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{SOURCE_BUCKET}"}}}]})


def notify(s3: Any, queue_arn: str) -> None:
    """S3 -> SQS notifications of every create and remove in the source bucket."""
    s3.put_bucket_notification_configuration(
        Bucket=SOURCE_BUCKET, NotificationConfiguration={"QueueConfigurations": [{
            "Id": "s3ferry-demo", "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})


def queue_depth(sqs: Any, url: str) -> int:
    """Messages visible, in flight or delayed (SQS's approximate counts)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs.get(name, "0")) for name in names)


# -- seeding -------------------------------------------------------------------------------

def _parallel(fn: Callable[[Any], Any], objects: Iterable[Any]) -> list[Any]:
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


def with_parent(argv: list[str]) -> list[str]:
    """``argv``, dying with the demo where the kernel can arrange it."""
    # PR_SET_PDEATHSIG follows the forking thread: only the main thread may rely on it.
    if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    return argv


def worker_argv(config: Path, queues: Queues, port: int, summary: Path,
                idle_exit: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "worker", "--config", str(config),
            "--queue-url", queues.queue_url, "--dlq-url", queues.dlq_url,
            "--summary-json", str(summary), "--metrics-port", str(port)]
    return with_parent(argv + (["--exit-when-idle"] if idle_exit else []))


def dispatcher_argv(command: str, config: Path, queues: Queues, *extra: str) -> list[str]:
    """``s3ferry backfill`` or ``s3ferry events`` on the demo's config and job queue."""
    return with_parent([sys.executable, "-m", "s3ferry", command, "--config", str(config),
                        "--queue-url", queues.queue_url, *extra])


def spawn(argv: list[str], workdir: Path, log_path: Path,
          out_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv``: stderr (and stdout, unless ``out_path``) appended to ``log_path``."""
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("ab"))
        out = files.enter_context(out_path.open("wb")) if out_path else log
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                                env=worker_env(), cwd=workdir)


def start_workers(workdir: Path, config: Path, queues: Queues, *, tag: str = "",
                  idle_exit: bool = True) -> list[WorkerProcess]:
    workers = []
    for index in range(1, WORKERS + 1):
        port = free_port()
        log_path = workdir / f"worker-{tag}{index}.log"
        summary = workdir / f"worker-{tag}{index}-summary.json"
        summary.unlink(missing_ok=True)
        popen = spawn(worker_argv(config, queues, port, summary, idle_exit), workdir, log_path)
        workers.append(WorkerProcess(index=index, popen=popen, metrics_port=port,
                                     log_path=log_path, summary_path=summary))
    return workers


def start_listener(workdir: Path, config: Path, queues: Queues,
                   events: EventQueues) -> WorkerProcess:
    """``s3ferry events``: its JSON summary (stdout) goes to a file of its own."""
    port = free_port()
    argv = dispatcher_argv("events", config, queues, "--events-queue-url", events.events_url,
                           "--events-dlq-url", events.events_dlq_url,
                           "--metrics-port", str(port), "--wait-seconds", "1")
    log_path, summary = workdir / "events.log", workdir / "events-summary.json"
    return WorkerProcess(index=0, popen=spawn(argv, workdir, log_path, summary),
                         metrics_port=port, log_path=log_path, summary_path=summary,
                         counter=_ENQUEUED, counted="enqueued")


def run_backfill(workdir: Path, config: Path, queues: Queues, *extra: str) -> dict[str, Any]:
    """``s3ferry backfill --delete`` to completion; its JSON summary."""
    log_path = workdir / "backfill.log"
    argv = dispatcher_argv("backfill", config, queues, "--delete", "--progress-seconds", "1",
                           *extra)
    with log_path.open("ab") as log:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, env=worker_env(), cwd=workdir, check=False,
                              timeout=BACKFILL_DEADLINE_SECONDS)
    if done.returncode != 0:
        raise DemoError(f"s3ferry backfill exited {done.returncode} (see {log_path})")
    try:
        summary = json.loads(done.stdout)
    except ValueError as exc:
        raise DemoError(f"s3ferry backfill printed no JSON summary: {exc}") from exc
    return dict(summary)


def scrape(worker: WorkerProcess) -> None:
    """Read the worker's /metrics; remember how many copies it reported there."""
    try:
        with urllib.request.urlopen(worker.metrics_url, timeout=1) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, http.client.HTTPException):
        return  # not serving yet, or already gone (an answer cut short as it exits)
    worker.scrapes += 1
    worker.last_copied = int(sum(float(v) for v in worker.counter.findall(text)))


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


# -- event mode ----------------------------------------------------------------------------

def change_source(client: Any) -> tuple[dict[str, int], str]:
    """Upload new objects, overwrite one, delete one; what was done and the deleted key."""
    new, overwrite, deleted = event_changes()
    _parallel(lambda obj: seed_one(client, obj), [*new, overwrite])
    client.delete_object(Bucket=SOURCE_BUCKET, Key=deleted)
    return {"uploaded": len(new), "overwritten": 1, "deleted": 1}, deleted


def sizes(client: Any, bucket: str) -> dict[str, int]:
    paginator = client.get_paginator("list_objects_v2")
    return {item["Key"]: item["Size"] for page in paginator.paginate(Bucket=bucket)
            for item in page.get("Contents", [])}


def mirrored(clients: Clients) -> bool:
    """Same keys, same sizes, then same sha256 for every key."""
    source = sizes(clients.source, SOURCE_BUCKET)
    if source != sizes(clients.destination, DEST_BUCKET):
        return False
    return all(_parallel(lambda key: _sha256(clients.source, SOURCE_BUCKET, key)
                         == _sha256(clients.destination, DEST_BUCKET, key), source))


def wait_mirrored(clients: Clients, watch: Watch, deadline: float) -> float | None:
    """Seconds until the destination mirrors the source, or None at the deadline."""
    began = time.monotonic()
    while time.monotonic() < deadline:
        watch.tick()
        with contextlib.suppress(BotoCoreError, ClientError):  # mid-change: look again
            if mirrored(clients):
                return time.monotonic() - began
        time.sleep(1.0)
    return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def events_phase(workdir: Path, clients: Clients, queues: Queues,
                 procs: list[WorkerProcess]) -> EventPhase:
    """Listener and workers up, the source changed, wait for the mirror, SIGTERM them all."""
    events = create_event_queues(clients.sqs)
    notify(clients.source, events.events_arn)
    config = workdir / "s3ferry.toml"
    listener = start_listener(workdir, config, queues, events)
    procs.append(listener)
    workers = start_workers(workdir, config, queues, tag="events-", idle_exit=False)
    procs += workers
    say(f"   events listener: pid {listener.popen.pid}, {listener.metrics_url}, "
        f"log {listener.log_path}")
    announce(workers, "event worker")
    changes, deleted = change_source(clients.source)
    say("   changed the source: " + _counts(changes))
    watch = Watch(workers=[listener, *workers], sqs=clients.sqs, queue_url=queues.queue_url)
    after = wait_mirrored(clients, watch, time.monotonic() + MIRROR_DEADLINE_SECONDS)
    stop_workers([listener])  # SIGTERM: it finishes its batch and exits 0
    stop_workers(workers)
    return EventPhase(
        changes=changes, deleted_key=deleted, listener=listener,
        listener_code=listener.popen.poll(), listener_summary=read_json(listener.summary_path),
        totals=add_summaries(workers), workers=workers,
        worker_codes=[w.popen.poll() for w in workers], mirrored_after=after,
        events_dlq=queue_depth(clients.sqs, events.events_dlq_url))


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


def verify_all(clients: Clients, keys: Sequence[str]) -> list[Difference]:
    found = _parallel(lambda key: compare(clients, key), keys)
    return [diff for diff in found if diff is not None]


def extra_keys(clients: Clients, keys: Iterable[str]) -> list[str]:
    """Destination keys with no source (a delete that did not happen)."""
    return sorted(set(sizes(clients.destination, DEST_BUCKET)) - set(keys))


# -- report --------------------------------------------------------------------------------

def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"


def _worker_line(worker: WorkerProcess, code: int | None) -> str:
    seen = (f"scraped {worker.scrapes}x, {worker.counted}={worker.last_copied} at the last "
            "scrape"
            if worker.scrapes else "never scraped")
    state = "exit 0" if code == 0 else f"exit {code}" if code is not None else "did not exit"
    return f"{worker.metrics_url} ({seen}; {state}; log {worker.log_path.name})"


def _rate(n: int, seconds: float | None) -> str:
    return f"{n / 1e6 / seconds:.1f} MB/s" if seconds else "- MB/s"


def _timing_rows(outcome: DemoRun) -> list[tuple[str, str]]:
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


def _verdict(outcome: DemoRun, label: str, fields: frozenset[str],
             what: str) -> tuple[str, str]:
    equal = outcome.equal(fields)
    verdict = "yes" if equal == outcome.objects else "NO"
    return label, f"{verdict}  ({equal}/{outcome.objects} objects: {what})"


def _backfill_rows(backfill: Mapping[str, Any]) -> list[tuple[str, str]]:
    if not backfill:
        return []
    enqueued = backfill.get("enqueued") or {}
    return [("backfill listed", _counts(backfill.get("listed") or {})),
            ("backfill decisions", _counts(backfill.get("decisions") or {})),
            ("backfill enqueued", f"{_counts(enqueued.get('jobs') or {})}  "
                                  f"({_mib(int(enqueued.get('bytes') or 0))})")]


def _event_rows(ev: EventPhase | None) -> list[tuple[str, str]]:
    if ev is None:
        return []
    got, t = ev.listener_summary, ev.totals
    after = (f"{ev.mirrored_after:.1f} s after the changes" if ev.mirrored_after is not None
             else f"NOT within {MIRROR_DEADLINE_SECONDS:.0f} s")
    return [
        ("source changes", _counts(ev.changes)),
        ("events received", _counts(got.get("events") or {})),
        ("event jobs enqueued", _counts(got.get("jobs") or {})),
        ("events dropped", _counts(got.get("dropped") or {})),
        ("event dead letters", str(ev.events_dlq)),
        ("event workers did", f"{_counts(t.results)}  ({_mib(t.bytes_copied)} copied)"),
        ("destination mirrored", after),
        ("events listener /metrics", _worker_line(ev.listener, ev.listener_code)),
        *[(f"event worker {w.index} /metrics", _worker_line(w, code))
          for w, code in zip(ev.workers, ev.worker_codes, strict=True)],
    ]


def _final_rows(outcome: DemoRun) -> list[tuple[str, str]]:
    rows = [_verdict(outcome, "every object byte-equal", BYTE_FIELDS, "size and sha256"),
            _verdict(outcome, "metadata and tags equal", META_FIELDS,
                     "headers, user metadata, tags")]
    if outcome.events is not None:
        gone = outcome.events.deleted_key not in outcome.extras
        rows.append(("deleted object gone", f"{'yes' if gone else 'NO'}  "
                                            f"({shown(outcome.events.deleted_key)})"))
    rows.append(("extra at destination", str(len(outcome.extras))))
    if outcome.rerun is not None:
        rows.append(("backfill re-run", "nothing to do  (--dry-run --compare checksum)"
                     if not outcome.rerun else f"would enqueue {_counts(outcome.rerun)}"))
    issues = len(problems(outcome))
    rows.append(("verdict", "yes  (the destination mirrors the source)" if not issues
                 else f"NO  ({issues} problem(s), listed below)"))
    return rows


def render(outcome: DemoRun) -> str:
    """The human-readable summary table."""
    t = outcome.totals
    rows: list[tuple[str, str]] = [
        ("objects seeded", f"{outcome.seeded or outcome.objects}  "
                           f"({_mib(outcome.bytes_seeded)})"),
        *_backfill_rows(outcome.backfill),
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
    rows += [*_event_rows(outcome.events), ("objects at the end", str(outcome.objects))]
    rows += _final_rows(outcome)
    width = max(len(label) for label, _ in rows) + 2
    title = f"s3ferry demo: {SOURCE} -> {DESTINATION}"
    lines = [title, "=" * len(title)] + [f"{label:<{width}}{value}" for label, value in rows]
    return "\n".join(lines)


def problems(outcome: DemoRun) -> list[str]:
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
    out += [f"{shown(key)}: at the destination, not at the source" for key in outcome.extras]
    if outcome.rerun:
        out.append(f"a backfill re-run would enqueue {_counts(outcome.rerun)}")
    return out + _event_problems(outcome.events)


def _event_problems(ev: EventPhase | None) -> list[str]:
    if ev is None:
        return []
    out = list(ev.totals.unreported)
    if ev.mirrored_after is None:
        out.append(f"the destination did not mirror the source within "
                   f"{MIRROR_DEADLINE_SECONDS:.0f} s")
    if failed := ev.totals.results["failed"]:
        out.append(f"{failed} event job(s) failed")
    if ev.events_dlq:
        out.append(f"{ev.events_dlq} event(s) in the events dead-letter queue")
    if ev.listener_code != 0:
        out.append(f"the events listener ended with {ev.listener_code} "
                   f"(see {ev.listener.log_path})")
    out += [f"event worker {w.index} ended with {code} (see {w.log_path})"
            for w, code in zip(ev.workers, ev.worker_codes, strict=True) if code != 0]
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
    started = start_workers(workdir, config, queues)
    workers += started
    watch = Watch(workers=started, sqs=sqs, queue_url=queues.queue_url)
    announce(started)
    watch.codes = watch.wait(time.monotonic() + WORKER_DEADLINE_SECONDS)
    stop_workers(started)  # only acts on a worker that missed the deadline
    return watch


def announce(workers: Iterable[WorkerProcess], label: str = "worker") -> None:
    for worker in workers:
        say(f"   {label} {worker.index}: pid {worker.popen.pid}, {worker.metrics_url}, "
            f"log {worker.log_path}")


def run(bed: LocalBed, workdir: Path, small: int, workers: list[WorkerProcess]) -> DemoRun:
    """Every phase, timed; ``workers`` receives the worker processes as soon as they start."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    with phase(timings, "start", "starting the global and china partitions (LocalStack)"):
        bed.start()
    config = workdir / "s3ferry.toml"
    write_private(config, bed.config_toml() + routes_toml())
    with open_clients(bed) as clients:
        outcome = ferry(bed, clients, workdir, demo_objects(small), workers, timings)
    outcome.wall = time.monotonic() - began
    return outcome


def ferry(bed: LocalBed, clients: Clients, workdir: Path, objects: Sequence[DemoObject],
          workers: list[WorkerProcess], timings: dict[str, float]) -> DemoRun:
    """Seed, backfill, copy with the workers, event mode, verify: the demo proper."""
    total = sum(o.size for o in objects)
    config = workdir / "s3ferry.toml"
    with phase(timings, "seed", f"seeding {len(objects)} objects ({_mib(total)}) on {SOURCE}"):
        queues = seed(bed, clients, objects)
    with phase(timings, "backfill", f"s3ferry backfill: route {ROUTE!r}, enqueuing the diff"):
        backfill = run_backfill(workdir, config, queues)
    with phase(timings, "copy", f"{WORKERS} workers copying {SOURCE} -> {DESTINATION}"):
        watch = copy(workdir, config, queues, clients.sqs, workers)
    copiers = list(workers)
    with phase(timings, "events", "event mode: s3ferry events, 2 workers, source changes, "
                                  "until the destination mirrors the source"):
        events = events_phase(workdir, clients, queues, workers)
    with phase(timings, "verify", "verifying every object independently, re-running the "
                                  "backfill (--dry-run)"):
        keys = [item["Key"] for item in list_source(clients.source)]
        mismatches = verify_all(clients, keys)
        extras = extra_keys(clients, keys)
        rerun = run_backfill(workdir, config, queues, "--dry-run", "--compare", "checksum")
    return DemoRun(objects=len(keys), bytes_seeded=total, totals=add_summaries(copiers),
                   workers=copiers, worker_codes=watch.codes, mismatches=mismatches,
                   dlq_messages=queue_depth(clients.sqs, queues.dlq_url),
                   queue_left=queue_depth(clients.sqs, queues.queue_url), timings=timings,
                   drained_after=watch.drained_after, wall=0.0, seeded=len(objects),
                   backfill=backfill, events=events, extras=extras,
                   rerun=dict(rerun.get("would_enqueue") or {}).get("jobs") or {})


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
                    "objects, back it up with s3ferry backfill and two workers, then mirror "
                    "new objects, an overwrite and a delete with s3ferry events and two more "
                    "workers; verify every object independently and print a summary. Exit 0 "
                    "only if the destination mirrors the source.")
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
        say(f"\nFAILED: {len(issues)} problem(s)" if issues else "\nOK: backfill and events "
            "copied every object, the deletion was mirrored, the demo checked each copy")
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
    except DemoError as exc:
        say(f"s3ferry demo: {exc}")
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
