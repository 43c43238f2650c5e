"""Measured child processes: CPU seconds from ``wait4``, peak RSS from ``VmHWM``.

The kernel accounts a child's user + system time and hands it over when the child is reaped,
so the copying processes are measured exactly and the emulators (other process trees) never
are. A child is reaped only here, with ``wait4``: ``Popen.wait``/``poll`` would reap it first
and the accounting would be lost.

Peak RSS is *not* ``ru_maxrss``: Linux carries the high-water mark of the memory a process had
before ``exec`` into it, so every child of this (large) bench process would report the bench's
own RSS. ``VmHWM`` in ``/proc/<pid>/status`` belongs to the address space after ``exec``; a
thread samples it every 20 ms until the child exits (it only grows, so the last sample is the
peak but for growth in the final 20 ms).
"""

from __future__ import annotations

import os
import signal
import stat
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Usage:
    exit_code: int
    cpu_seconds: float
    max_rss: int  # bytes
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Child:
    """One started process, reaped with ``wait4`` so its resource usage is kept."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log: Path,
                 cwd: Path | None = None, stdout: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.stdout = stdout
        self.started = time.perf_counter()
        with log.open("ab") as err, (stdout or log).open("ab") as out:
            self.popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.usage: Usage | None = None
        self._hwm = 0
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        path = f"/proc/{self.pid}/status"
        while self.usage is None:
            hwm = vm_hwm(path)
            if hwm is None:  # exited (a zombie has no VmHWM)
                return
            self._hwm = max(self._hwm, hwm)
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> Usage | None:
        if self.usage is None:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._done(status, ru)
        return self.usage

    def wait(self, timeout: float | None = None) -> Usage:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (usage := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} still running after {timeout} s; killed")
            time.sleep(0.02)
        return usage

    def terminate(self) -> None:
        if self.usage is None:
            self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.usage is None:
            self.popen.kill()
            _, status, ru = os.wait4(self.pid, 0)
            self._done(status, ru)

    def _done(self, status: int, ru: Any) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # Popen must not try to reap it again
        wall = time.perf_counter() - self.started
        self._sampler.join(timeout=1)
        self.usage = Usage(exit_code=code, cpu_seconds=ru.ru_utime + ru.ru_stime,
                           max_rss=self._hwm, wall_seconds=wall)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def vm_hwm(status_path: str = "/proc/self/status") -> int | None:
    """Peak resident set size of a process in bytes, or None if it is gone."""
    try:
        with open(status_path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


# -- the emulators at rest -------------------------------------------------------------------

# A run starts once the emulators have been quiet for QUIET_WINDOW_SECONDS: all of them
# together below QUIET_CORES of CPU, so work left from the previous run (a dropped bucket of
# 5,000 objects, a GiB of freed buffers) cannot land in the next one. (Added when the first
# run of each workload in a repetition was slow; the waits then showed the emulators already
# at rest, so that was not the cause: see bench/README.md.)
QUIET_WINDOW_SECONDS = 0.25
QUIET_CORES = 0.15
QUIET_MAX_SECONDS = 10.0


def _stats(proc: Path) -> Iterable[tuple[int, list[str]]]:
    """(pid, fields after the command name) of every live process in ``/proc/<pid>/stat``:
    state, ppid, pgrp, ... utime (11), stime (12)."""
    for entry in proc.glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        yield int(entry.parent.name), fields


def cpu_times_by_group(pgids: Iterable[int],
                       proc: Path = Path("/proc")) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of every live process (all threads) in each of these
    process groups, from one pass over ``/proc``. System time is the kernel's work for them:
    on this VM, mostly faulting in pages that the host took back (see bench/README)."""
    ticks: dict[int, list[int]] = {pgid: [0, 0] for pgid in pgids}
    for _, fields in _stats(proc):
        group = ticks.get(int(fields[2]))
        if group is not None:
            group[0] += int(fields[11])
            group[1] += int(fields[12])
    per_second = os.sysconf("SC_CLK_TCK")
    return {pgid: (user / per_second, system / per_second)
            for pgid, (user, system) in ticks.items()}


def settle(cpu: Callable[[], float], *, sleep: Callable[[float], None] = time.sleep,
           window: float = QUIET_WINDOW_SECONDS, cores: float = QUIET_CORES,
           limit: float = QUIET_MAX_SECONDS) -> tuple[float, bool]:
    """Wait until ``cpu()`` (CPU seconds, growing) grows by less than ``cores`` x ``window``
    over one window. Returns (seconds waited, whether it got quiet within ``limit``)."""
    waited = 0.0
    before = cpu()
    while waited < limit:
        sleep(window)
        waited += window
        now = cpu()
        if now - before < cores * window:
            return waited, True
        before = now
    return waited, False


# -- the stored bytes in memory -----------------------------------------------------------------

# This VM runs a DAMON scheme (/sys/kernel/mm/damon/admin) that pages out file pages left
# unread for about 30 s: the emulators keep every object over 512 KiB in an (unlinked) file,
# so the first run of a workload in each repetition read its source from the disk (a cold
# GiB: 2.4 s of kernel time, against 0.2 s cached) and the runs right after it did not.
WARM_CHUNK = 1 << 20


def open_files(pgids: Iterable[int], proc: Path = Path("/proc")) -> list[Path]:
    """The regular files that processes of these groups hold open (one path per file, as
    ``/proc/<pid>/fd/<n>``: it opens unlinked files too)."""
    groups = set(pgids)
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for pid, fields in _stats(proc):
        if int(fields[2]) not in groups:
            continue
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                found.append(fd)
    return found


def warm(paths: Iterable[Path]) -> dict[str, Any]:
    """Read every file through once, so its pages are in the page cache when the clock
    starts (what the runs that follow another run of the same workload find). Returns how
    many files and bytes, and how long it took."""
    began = time.perf_counter()
    buf = bytearray(WARM_CHUNK)
    files = nbytes = 0
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    nbytes += n
        except OSError:
            continue  # closed or gone meanwhile
        files += 1
    return {"files": files, "bytes": nbytes,
            "seconds": round(time.perf_counter() - began, 3)}
