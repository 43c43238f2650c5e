"""``make soak``: a bounded run under faults that proves nothing is lost, corrupted or left open.

Two local partitions behind fault proxies (:mod:`tests.faultproxy`); about 2,000 objects
(multipart ones among them, headers, metadata and tags on some) backfilled from "global" to
"china" by ``s3ferry backfill``; two ``s3ferry worker`` processes, each SIGKILLed at random
moments and started again; S3 answering 503s, resets, truncated bodies and 200-with-error
documents; and a redelivery storm: the backfill run again while the first one's jobs are on
the queue (every job twice), heartbeats dropped for a while so leases end mid-copy, and a
queue whose receives are slow. Some jobs are meant to fail: archived sources, keys the
destination refuses, sources deleted after they were listed, malformed messages.

When the queue is empty the soak compares every destination object with its source (bytes,
headers, user metadata, tags), lists the multipart uploads left open, reads the dead-letter
queue, and prints::

    lost, corrupted, orphaned uploads, dead letters by reason, retries by reason, ...

It exits 0 only when lost = corrupted = orphaned = 0 and every dead letter is one of the
expected ones, each expected one there. ``make test`` runs a small version
(tests/integration/test_soak.py).

    python -m tests.soak [--objects 2000] [--large 24] [--kills 6] [--seed N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from common.jobs import jobs_of
from common.limits import KIB, MIB
from s3ferry.localbed import LocalBed, free_port, write_private
from tests.faultproxy import Fault, FaultProxy, Rule, rules
from tests.integration.harness import describe, route_toml

ROOT = Path(__file__).resolve().parents[1]
S3_CALLS = frozenset({
    "GetObject", "HeadObject", "PutObject", "UploadPart", "CreateMultipartUpload",
    "CompleteMultipartUpload", "AbortMultipartUpload", "ListParts", "ListMultipartUploads",
    "GetObjectTagging"})
MALFORMED = ("this is not json {", '{"v": 1, "kind": "teleport"}')


@dataclass(frozen=True)
class Plan:
    """How large a soak."""

    objects: int = 2000
    large: int = 24  # multipart objects among them (11-24 MiB)
    kills: int = 6  # SIGKILLs of a worker, at random moments
    kill_every: tuple[float, float] = (4.0, 12.0)
    seed: int = 2026
    deadline: float = 1200.0  # seconds for the queue to drain


SMALL = Plan(objects=150, large=5, kills=2, kill_every=(3.0, 6.0), deadline=300.0)

WORKER = {"VISIBILITY_TIMEOUT": "10", "PART_SIZE": str(5 * MIB),
          "MULTIPART_THRESHOLD": str(5 * MIB), "MAX_PARTS": "8", "MAX_JOBS": "16",
          "MAX_ATTEMPTS": "12", "RETRY_MAX_SECONDS": "20", "WAIT_TIME_SECONDS": "2",
          "DRAIN_SECONDS": "5"}


@dataclass
class Seeded:
    """What the source holds, and what each key is meant to come to."""

    sizes: dict[str, int] = field(default_factory=dict)
    archived: set[str] = field(default_factory=set)  # GLACIER: dead letter source_archived
    denied: set[str] = field(default_factory=set)  # the destination refuses: access_denied
    vanished: set[str] = field(default_factory=set)  # deleted after they were listed

    def copied(self) -> list[str]:
        """Keys that must end at the destination, equal to their source."""
        return sorted(set(self.sizes) - self.archived - self.denied - self.vanished)


@dataclass
class Report:
    objects: int = 0
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    unexpected_dead_letters: list[str] = field(default_factory=list)
    missing_dead_letters: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    metrics: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    incarnations: int = 0
    seconds: float = 0.0
    drained: bool = False

    def passed(self) -> bool:
        return (self.drained and not self.lost and not self.corrupted and not self.orphaned
                and not self.unexpected_dead_letters and not self.missing_dead_letters)

    def lines(self) -> list[str]:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"
        return [
            f"objects                {self.objects}",
            f"lost                   {len(self.lost)} {self.lost[:5] or ''}",
            f"corrupted              {len(self.corrupted)} {self.corrupted[:5] or ''}",
            f"orphaned uploads       {len(self.orphaned)} {self.orphaned[:5] or ''}",
            f"dead letters           {counts(self.dead_letters)}",
            f"  unexpected           {len(self.unexpected_dead_letters)}",
            f"  expected, missing    {len(self.missing_dead_letters)}",
            f"retries                {counts(self.retries)}",
            f"worker counters        {counts(self.metrics)}",
            f"faults injected        {counts(self.faults)}",
            f"workers killed         {self.kills} (of {self.incarnations} started)",
            f"queue drained          {'yes' if self.drained else 'NO'} in {self.seconds:.0f} s",
            f"result                 {'PASS' if self.passed() else 'FAIL'}",
        ]


# -- the source -------------------------------------------------------------------------------

def seed(client: Any, bucket: str, plan: Plan) -> Seeded:
    """Mixed objects: mostly small, some of a few MiB, ``plan.large`` multipart ones; every
    fifth with headers, metadata and tags; a few archived, refused or soon deleted."""
    rng = random.Random(plan.seed)
    seeded = Seeded()
    for n in range(plan.objects):
        if n < plan.large:
            key, size = f"large/{n:04d}.bin", rng.randrange(11 * MIB, 24 * MIB)
        elif n % 50 == 7:
            key, size = f"medium/{n:04d}.bin", rng.randrange(1 * MIB, 5 * MIB)
        else:
            key, size = f"small/{n % 17:02d}/{n:05d}.txt", rng.randrange(0, 48 * KIB)
        seeded.sizes[key] = size
    special = max(1, plan.objects // 200)
    for n in range(special):
        seeded.sizes[f"cold/{n}.bin"] = 10
        seeded.archived.add(f"cold/{n}.bin")
        seeded.sizes[f"denied/{n}.bin"] = 100 + n
        seeded.denied.add(f"denied/{n}.bin")
        seeded.sizes[f"vanish/{n}.bin"] = 20
        seeded.vanished.add(f"vanish/{n}.bin")

    def put(item: tuple[int, tuple[str, int]]) -> None:
        n, (key, size) = item
        extra: dict[str, Any] = {}
        if n % 5 == 0:
            extra = {"ContentType": "application/x-soak", "CacheControl": "max-age=9",
                     "Metadata": {"n": str(n)}, "Tagging": f"n={n}&soak=1"}
        if key in seeded.archived:
            extra["StorageClass"] = "GLACIER"
        client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size), **extra)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, enumerate(seeded.sizes.items())))
    return seeded


# -- the faults ---------------------------------------------------------------------------------

def s3_faults(denied: bool) -> list[Rule]:
    chosen = [rules(Fault.SLOWDOWN, 0.05), rules(Fault.RESET, 0.02),
              rules(Fault.TRUNCATE, 0.01), rules(Fault.LATENCY, 0.05, seconds=0.2),
              rules(Fault.ERROR_200, 0.1, "CompleteMultipartUpload")]
    on_s3 = [dataclasses.replace(r, operations=r.operations or S3_CALLS) for r in chosen]
    if denied:  # S3 refuses these uploads from their headers
        on_s3.insert(0, rules(Fault.EARLY_ERROR, 1.0, "PutObject", "UploadPart",
                              match="/denied/"))
    return on_s3


QUEUE_FAULTS = [rules(Fault.LATENCY, 0.2, "ReceiveMessage", seconds=0.5),
                rules(Fault.INTERNAL, 0.02, "ReceiveMessage", "DeleteMessageBatch")]
# heartbeats lost while parts are slow: leases end mid-copy and jobs come back to others
STORM_QUEUE = [rules(Fault.DROP, 0.7, "ChangeMessageVisibilityBatch")]
STORM_PARTS = [rules(Fault.LATENCY, 0.5, "UploadPart", seconds=4.0)]


# -- the fleet ----------------------------------------------------------------------------------

@dataclass
class Incarnation:
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    last_metrics: str = ""


class Fleet:
    """Worker processes, started again when killed; their /metrics read every second."""

    def __init__(self, workdir: Path, config: Path, queue_url: str, dlq_url: str) -> None:
        self.workdir, self.config = workdir, config
        self.queue_url, self.dlq_url = queue_url, dlq_url
        self.incarnations: list[Incarnation] = []
        self.live: list[Incarnation] = []
        self.kills = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._scraper = threading.Thread(target=self._scrape_loop, daemon=True)

    def start(self, n: int) -> None:
        for _ in range(n):
            self.live.append(self._spawn())
        self._scraper.start()

    def _spawn(self) -> Incarnation:
        port = free_port()
        log = self.workdir / f"worker-{len(self.incarnations)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3FERRY_")}
        env.update({f"S3FERRY_WORKER__{k}": v for k, v in WORKER.items()})
        env.update(S3FERRY_LOG_FORMAT="json", S3FERRY_METRICS_HOST="127.0.0.1")
        argv = [sys.executable, "-m", "s3ferry", "worker", "--config", str(self.config),
                "--queue-url", self.queue_url, "--dlq-url", self.dlq_url,
                "--metrics-port", str(port)]
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        incarnation = Incarnation(popen, port, log)
        self.incarnations.append(incarnation)
        return incarnation

    def kill_one(self, rng: random.Random) -> None:
        with self._lock:
            victim = rng.choice(self.live)
            self._scrape(victim)
            victim.popen.send_signal(signal.SIGKILL)
            victim.popen.wait(timeout=30)
            self.live.remove(victim)
            self.live.append(self._spawn())
            self.kills += 1

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for incarnation in self.live:
                self._scrape(incarnation)
                incarnation.popen.send_signal(signal.SIGTERM)
            for incarnation in self.live:
                try:
                    incarnation.popen.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    incarnation.popen.kill()
                    incarnation.popen.wait(timeout=30)

    def _scrape_loop(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                for incarnation in self.live:
                    self._scrape(incarnation)

    @staticmethod
    def _scrape(incarnation: Incarnation) -> None:
        url = f"http://127.0.0.1:{incarnation.port}/metrics"
        with (contextlib.suppress(OSError, ValueError),
              urllib.request.urlopen(url, timeout=2) as answer):
            incarnation.last_metrics = answer.read().decode()

    def counters(self) -> tuple[Counter[str], Counter[str]]:
        """Retries by reason, and the other counters that tell the story, over every
        incarnation (a killed one as last scraped)."""
        retries: Counter[str] = Counter()
        other: Counter[str] = Counter()
        wanted = ("s3ferry_leases_lost_total", "s3ferry_uploads_resumed_total",
                  "s3ferry_parts_reused_total", "s3ferry_jobs_requeued_total")
        for incarnation in self.incarnations:
            for reason, value in re.findall(
                    r'^s3ferry_retries_total\{reason="([^"]+)"\} (\S+)$',
                    incarnation.last_metrics, re.M):
                retries[reason] += int(float(value))
            for name in wanted:
                if found := re.search(rf"^{name} (\S+)$", incarnation.last_metrics, re.M):
                    other[name.removeprefix("s3ferry_").removesuffix("_total")] += int(
                        float(found[1]))
        return retries, other


# -- one soak -----------------------------------------------------------------------------------

class Soak:
    def __init__(self, bed: LocalBed, workdir: Path, plan: Plan) -> None:
        self.bed, self.workdir, self.plan = bed, workdir, plan
        self.rng = random.Random(plan.seed)
        self.clients = {name: boto3.client("s3", config=bed.servers[name].boto_config(),
                                           **bed.servers[name].client_kwargs())
                        for name in ("global", "china")}
        server = bed.servers["global"]
        self.sqs = boto3.client("sqs", config=server.boto_config(), **server.client_kwargs())
        self.src = f"soak-src-{uuid.uuid4().hex[:10]}"
        self.dst = f"soak-dst-{uuid.uuid4().hex[:10]}"

    def run(self) -> Report:
        began = time.monotonic()
        self.clients["global"].create_bucket(Bucket=self.src)
        self.clients["china"].create_bucket(
            Bucket=self.dst, CreateBucketConfiguration={"LocationConstraint": "cn-north-1"})
        seeded = seed(self.clients["global"], self.src, self.plan)
        queue_url, dlq_url = self._queues()
        with contextlib.ExitStack() as stack:
            proxies = {name: stack.enter_context(FaultProxy(
                self.bed.servers[name].endpoint_url, seed=self.plan.seed + n))
                for n, name in enumerate(("global", "china"))}
            config = self._config(proxies)
            report = self._under_faults(proxies, config, seeded, queue_url, dlq_url)
            report.faults = Counter({f"{op}:{fault}": n for p in proxies.values()
                                     for (op, fault), n in p.injected.items()})
        self._verify(seeded, dlq_url, report)
        report.seconds = time.monotonic() - began
        return report

    def _queues(self) -> tuple[str, str]:
        name = f"soak-{uuid.uuid4().hex[:10]}"
        queue = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        dlq = self.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        return queue, dlq

    def _config(self, proxies: dict[str, FaultProxy]) -> Path:
        def behind(name: str, as_name: str | None = None) -> str:
            server = dataclasses.replace(self.bed.servers[name],
                                         endpoint_url=proxies[name].url)
            return server.endpoint_toml(as_name)

        return write_private(self.workdir / "s3ferry.toml", "\n".join(
            [behind("global"), behind("china"), behind("global", "queue"),
             route_toml("soak", self.src, self.dst)]))

    def _backfill(self, config: Path, queue_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3FERRY_")}
        with (self.workdir / "backfill.log").open("ab") as log:
            subprocess.run([sys.executable, "-m", "s3ferry", "backfill", "--config",
                            str(config), "--queue-url", queue_url], cwd=ROOT, env=env,
                           stdout=log, stderr=log, timeout=600, check=True)

    def _under_faults(self, proxies: dict[str, FaultProxy], config: Path, seeded: Seeded,
                      queue_url: str, dlq_url: str) -> Report:
        proxies["global"].set_rules([*s3_faults(False), *QUEUE_FAULTS])
        proxies["china"].set_rules(s3_faults(True))
        self._backfill(config, queue_url)
        for key in seeded.vanished:  # listed and queued, then gone
            self.clients["global"].delete_object(Bucket=self.src, Key=key)
        for body in MALFORMED:
            self.sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        fleet = Fleet(self.workdir, config, queue_url, dlq_url)
        fleet.start(2)
        report = Report(objects=len(seeded.sizes))
        try:
            self._storm(proxies, config, queue_url, fleet)
            report.drained = self._until_drained(queue_url, fleet)
        finally:
            fleet.stop()
        report.retries, report.metrics = fleet.counters()
        report.kills, report.incarnations = fleet.kills, len(fleet.incarnations)
        for proxy in proxies.values():
            proxy.clear()
        return report

    def _storm(self, proxies: dict[str, FaultProxy], config: Path, queue_url: str,
               fleet: Fleet) -> None:
        """Heartbeats dropped and parts slow for a while, the backfill again (every job not
        done yet twice), and kills at random moments."""
        proxies["global"].set_rules([*s3_faults(False), *QUEUE_FAULTS, *STORM_QUEUE])
        proxies["china"].set_rules([*STORM_PARTS, *s3_faults(True)])
        time.sleep(self.rng.uniform(1.0, 2.0))
        self._backfill(config, queue_url)
        for n in range(self.plan.kills):
            time.sleep(self.rng.uniform(*self.plan.kill_every))
            fleet.kill_one(self.rng)
            if n == self.plan.kills // 2:  # the storm passes
                proxies["global"].set_rules([*s3_faults(False), *QUEUE_FAULTS])
                proxies["china"].set_rules(s3_faults(True))

    def _until_drained(self, queue_url: str, fleet: Fleet) -> bool:
        """True once the queue held nothing (visible, in flight or delayed) three looks in a
        row; False at the deadline."""
        deadline = time.monotonic() + self.plan.deadline
        empty = 0
        while time.monotonic() < deadline:
            empty = empty + 1 if queue_empty(self.sqs, queue_url) else 0
            if empty >= 3:
                return True
            for incarnation in list(fleet.live):
                if incarnation.popen.poll() is not None:
                    raise RuntimeError(f"a worker exited by itself: see {incarnation.log}")
            time.sleep(1.0)
        return False

    # -- the verdict ----------------------------------------------------------------------------

    def _verify(self, seeded: Seeded, dlq_url: str, report: Report) -> None:
        src, dst = self.clients["global"], self.clients["china"]

        def check(key: str) -> str:
            try:
                theirs = dst.get_object(Bucket=self.dst, Key=key)["Body"].read()
            except dst.exceptions.NoSuchKey:
                return "lost"
            ours = src.get_object(Bucket=self.src, Key=key)["Body"].read()
            if hashlib.sha256(theirs).digest() != hashlib.sha256(ours).digest():
                return "corrupted"
            same = describe(src, self.src, key) == describe(dst, self.dst, key)
            return "ok" if same else "corrupted"

        keys = seeded.copied()
        with ThreadPoolExecutor(16) as pool:
            for key, verdict in zip(keys, pool.map(check, keys), strict=True):
                if verdict == "lost":
                    report.lost.append(key)
                elif verdict == "corrupted":
                    report.corrupted.append(key)
        for key in seeded.vanished | seeded.denied | seeded.archived:
            with contextlib.suppress(dst.exceptions.ClientError):
                dst.head_object(Bucket=self.dst, Key=key)
                report.corrupted.append(key)  # should not have been written
        report.orphaned = [u["Key"] for u in dst.list_multipart_uploads(
            Bucket=self.dst).get("Uploads", [])]
        self._dead_letters(seeded, dlq_url, report)

    def _dead_letters(self, seeded: Seeded, dlq_url: str, report: Report) -> None:
        expected = {key: "source_archived" for key in seeded.archived} | {
            key: "access_denied" for key in seeded.denied} | dict.fromkeys(MALFORMED, "bad")
        seen: set[str] = set()
        for message in drain(self.sqs, dlq_url):
            reason = message["MessageAttributes"]["reason"]["StringValue"]
            report.dead_letters[reason] += 1
            try:
                [job] = jobs_of(message["Body"])
                key = job.source.key if job.kind == "copy" else job.destination.key
            except Exception:
                key = message["Body"]
            want = expected.get(key)
            if want is None or (want != reason and not (want == "bad" and reason in {
                    "not_json", "invalid_job"})):
                report.unexpected_dead_letters.append(f"{key}: {reason}")
            seen.add(key)
        report.missing_dead_letters = sorted(set(expected) - seen)


def queue_empty(sqs: Any, url: str) -> bool:
    """Nothing visible, in flight or delayed (False when the look itself fails)."""
    try:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    except Exception:  # a look that failed is no reason to stop looking
        return False
    return all(v == "0" for v in attributes.values())


def drain(sqs: Any, url: str) -> Iterator[dict[str, Any]]:
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            return
        for message in messages:
            yield message
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def run(bed: LocalBed, workdir: Path, plan: Plan) -> Report:
    return Soak(bed, workdir, plan).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Plan()
    parser.add_argument("--objects", type=int, default=defaults.objects)
    parser.add_argument("--large", type=int, default=defaults.large)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(defaults, objects=args.objects, large=args.large,
                               kills=args.kills, seed=args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="s3ferry-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {plan.objects} objects ({plan.large} multipart), 2 workers, "
          f"{plan.kills} kills, seed {plan.seed}; logs in {workdir}", flush=True)
    with LocalBed(workdir / "bed", rclone=False) as bed:
        report = run(bed, workdir, plan)
    for line in report.lines():
        print(line)
    if args.json:
        # not dataclasses.asdict: it rebuilds each Counter from its items, as counts of pairs
        args.json.write_text(json.dumps(vars(report), indent=2))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
