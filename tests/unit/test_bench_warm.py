"""Each timed run starts with the stored objects in memory, whatever came before it.

This VM pages out file pages left unread for about 30 s (a DAMON scheme), and the emulators
keep every object over 512 KiB in an unlinked file, so the first run of a workload in each
repetition used to read its source from the disk while the runs after it did not. The bench
reads the files the emulators hold open (and the peers' executables) before each clock; the
report shows each place in a repetition's order against the variant's median.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.measure import open_files, warm
from bench.report import by_position, summarize
from bench.run import warmed
from bench.tools import peer_binaries, s5cmd_binary

HOLDER = """
import os, sys, tempfile
kept = tempfile.TemporaryFile(dir=sys.argv[1])   # unlinked, as the emulators' objects
kept.write(os.urandom(3 * 1024 * 1024)); kept.flush()
named = open(sys.argv[2], "rb")
again = open(sys.argv[2], "rb")                  # the same file twice counts once
empty = tempfile.TemporaryFile(dir=sys.argv[1])  # nothing to read
print("ready", flush=True)
sys.stdin.read()
"""


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages in the page cache, pages) of a file, from mincore(2) over a read-only map."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec), pages


def test_open_files_finds_what_a_process_group_holds_open_even_unlinked(
        tmp_path: Path) -> None:
    named = tmp_path / "named.bin"
    named.write_bytes(os.urandom(2 * 1024 * 1024))
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(named)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            found = open_files([holder.pid])
            sizes = sorted(p.stat().st_size for p in found)
            assert sizes == [2 * 1024 * 1024, 3 * 1024 * 1024]  # once each, not the empty one
            assert open_files([2 ** 22 + 12345]) == []  # no such group
            done = warm(found)
            assert done["files"] == 2 and done["bytes"] == 5 * 1024 * 1024
        finally:
            os.killpg(holder.pid, signal.SIGTERM)


def test_warm_brings_a_files_pages_back_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "object.bin"
    path.write_bytes(os.urandom(8 * 1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    finally:
        os.close(fd)
    resident, pages = _resident_pages(path)
    assert resident < pages  # the check can see pages missing
    assert warm([path, tmp_path / "gone"]) | {"seconds": 0} == {
        "files": 1, "bytes": 8 * 1024 * 1024, "seconds": 0}
    assert _resident_pages(path) == (pages, pages)


def test_s5cmd_runs_as_its_own_binary_not_through_the_python_wrapper() -> None:
    binary = s5cmd_binary()
    with open(binary, "rb") as fh:
        assert fh.read(4) == b"\x7fELF"  # the Go program itself, not a Python script
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30,
                         check=True)
    assert out.stdout.startswith("v2.")
    assert all(p.is_file() and os.access(p, os.X_OK) for p in peer_binaries())


def test_the_report_shows_each_place_in_the_order_against_the_variants_median() -> None:
    def run(variant: str, position: int, wall: float) -> dict[str, object]:
        return {"workload": "W3", "variant": variant, "tool": variant, "rep": 0, "ok": True,
                "position": position, "wall_seconds": wall}

    runs = [run("a", 0, 12.0), run("b", 1, 10.0), run("a", 1, 10.0), run("b", 0, 12.0),
            run("a", 1, 10.0), run("b", 1, 10.0)]
    assert by_position(runs, summarize(runs)) == {"W3": [1.2, 1.0]}
    one = [run("a", 0, 1.0)]
    assert by_position(one, summarize(one)) == {}  # one place: nothing to compare


def test_the_report_says_what_was_read_before_the_clocks() -> None:
    runs = [{"warmed": {"files": 2, "bytes": 3 * 2 ** 30, "seconds": 0.5}},
            {"warmed": {"files": 2, "bytes": 2 ** 30, "seconds": 2.5}},
            {"warmed": {"files": 2, "bytes": 2 ** 30, "seconds": 0.7}}, {}]
    assert warmed(runs) == {"runs": 3, "max_bytes": 3 * 2 ** 30, "median_seconds": 0.7,
                            "max_seconds": 2.5}
