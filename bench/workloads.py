"""What the bench copies and with which tools: pure values, no I/O.

A :class:`Plan` is the whole bench: the workloads of issue 4 (full size) or a tiny version of
each (``smoke``), the number of interleaved repetitions and the settings every tool runs with.
The settings are chosen once per tool, the way a user would deploy it, and written into the
results so a reader can repeat a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Endpoint names, as in s3ferry.localbed: "global" holds every source; "china" is the far side.
SOURCE_ENDPOINT = "global"
CROSS = "china"
SAME = "global"


@dataclass(frozen=True, kw_only=True)
class ObjectSet:
    """Objects seeded once into one source bucket and copied by every run of a workload."""

    name: str
    count: int
    size: int
    dirs: int = 0  # spread keys over this many first-level "directories" (0: flat)
    seed_part_size: int = 0  # > 0: seed by a streamed multipart upload with these parts

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    def keys(self) -> list[str]:
        width = len(str(max(self.count - 1, 0)))
        names = [f"{self.name}-{i:0{width}d}.bin" for i in range(self.count)]
        if not self.dirs:
            return names
        return [f"d{i % self.dirs:02d}/{n}" for i, n in enumerate(names)]


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One tool with its settings; ``label`` names it in the results."""

    label: str
    tool: str  # "s3ferry" | "rclone" | "s5cmd"
    workers: int = 1  # s3ferry worker processes on the one queue
    flags: tuple[str, ...] = ()
    # s3ferry: "fleet": workers and ``s3ferry serve`` are running before the clock starts
    # (a deployed fleet), and the clock runs from ``s3ferry backfill --server``; "cold": the
    # clock starts with the workers and ``s3ferry backfill`` processes themselves.
    start: str = "fleet"


@dataclass(frozen=True, kw_only=True)
class Workload:
    id: str
    title: str
    objects: ObjectSet
    destination: str  # CROSS or SAME endpoint
    variants: tuple[Variant, ...]
    baseline: str | None  # label of the peer s3ferry is compared with
    verify_sample: int  # objects whose bytes are read back and hashed (plus every size)
    # at least this many repetitions, whatever the plan's: a run of 1-2 s is moved more by
    # the machine's noise (a paused emulator, a page fault storm) than the gap between tools
    reps: int = 0
    # an untimed run of the baseline opens each repetition: the first run of a workload in a
    # repetition otherwise finds the emulators as the other workloads left them (W3's first
    # place was 6% slower, its destination's kernel time higher: bench/README)
    warm_up: bool = False


@dataclass(frozen=True, kw_only=True)
class DiffPlan:
    """W5: synthetic keys through the diff in process, and real keys listed from LocalStack."""

    synthetic_keys: int
    real: ObjectSet
    variants: tuple[Variant, ...]


@dataclass(frozen=True, kw_only=True)
class Plan:
    name: str
    reps: int
    workloads: tuple[Workload, ...]
    diff: DiffPlan | None
    worker_env: dict[str, str] = field(default_factory=dict)
    profile: tuple[str, ...] = ()  # workload ids whose s3ferry run is profiled once more

    def reps_of(self, workload: Workload) -> int:
        return max(self.reps, workload.reps)

    @property
    def rounds(self) -> int:
        """Repetitions of the longest-repeated workload: how many rounds the bench runs."""
        return max([self.reps, *(self.reps_of(w) for w in self.workloads)])


# -- tool settings (documented in bench/README.md) -----------------------------------------

# One worker configuration for every workload, as a fleet would be deployed.
WORKER_ENV = {
    "S3FERRY_WORKER__MAX_JOBS": "64",
    # 16 x 8 MiB: a 128 MiB part budget keeps the worker under the 300 MiB RSS target
    "S3FERRY_WORKER__MAX_PARTS": "16",
    "S3FERRY_WORKER__PART_SIZE": str(8 * MIB),
    "S3FERRY_WORKER__MULTIPART_THRESHOLD": str(16 * MIB),
    "S3FERRY_WORKER__SERVER_COPY_THRESHOLD": str(1024 * MIB),
    "S3FERRY_WORKER__SERVER_PART_SIZE": str(256 * MIB),
    # the emulator copies server-side with its own CPU: 4 x 64 MiB at a time (bench/README)
    "S3FERRY_WORKER__SERVER_COPY_BUDGET": str(256 * MIB),
    "S3FERRY_WORKER__WAIT_TIME_SECONDS": "2",
    "S3FERRY_LOG_LEVEL": "info",
    "S3FERRY_LOG_FORMAT": "json",
}

# rclone: per-workload tuning (what a user reading rclone's docs would pass).
_RCLONE_BASE = ("--s3-no-check-bucket", "--fast-list", "-q")
RCLONE_LARGE = (*_RCLONE_BASE, "--transfers", "16", "--checkers", "16",
                "--s3-upload-cutoff", "16M", "--s3-chunk-size", "16M",
                "--s3-upload-concurrency", "4")
RCLONE_SMALL = (*_RCLONE_BASE, "--transfers", "64", "--checkers", "64")
RCLONE_GIANT = (*_RCLONE_BASE, "--transfers", "4", "--checkers", "8",
                "--multi-thread-cutoff", "64M", "--multi-thread-streams", "16",
                "--s3-chunk-size", "16M", "--s3-upload-cutoff", "16M",
                "--s3-upload-concurrency", "16")
RCLONE_DRY = (*_RCLONE_BASE, "--checkers", "32", "--dry-run")
S5CMD = ("--numworkers", "64", "--log", "error")

S3FERRY = Variant(label="s3ferry", tool="s3ferry")
S3FERRY_COLD = Variant(label="s3ferry cold", tool="s3ferry", start="cold")


def _cross(wid: str, title: str, objects: ObjectSet, rclone: tuple[str, ...],
           sample: int, reps: int = 0, warm_up: bool = False) -> Workload:
    return Workload(id=wid, title=title, objects=objects, destination=CROSS, reps=reps,
                    warm_up=warm_up,
                    variants=(S3FERRY, S3FERRY_COLD,
                              Variant(label="rclone", tool="rclone", flags=rclone)),
                    baseline="rclone", verify_sample=sample)


def _same(wid: str, title: str, objects: ObjectSet, rclone: tuple[str, ...],
          sample: int, reps: int = 0) -> Workload:
    return Workload(id=wid, title=title, objects=objects, destination=SAME, reps=reps,
                    variants=(S3FERRY, S3FERRY_COLD,
                              Variant(label="s5cmd", tool="s5cmd", flags=S5CMD),
                              Variant(label="rclone", tool="rclone", flags=rclone)),
                    baseline="s5cmd", verify_sample=sample)


def _scale(objects: ObjectSet, counts: tuple[int, ...], sample: int) -> Workload:
    variants = tuple(Variant(label=f"s3ferry x{n}", tool="s3ferry", workers=n) for n in counts)
    return Workload(id="W6", title=f"scale-out: {objects.name} with {counts} workers",
                    objects=objects, destination=CROSS, variants=variants, baseline=None,
                    verify_sample=sample)


def _diff_variants() -> tuple[Variant, ...]:
    return (Variant(label="s3ferry backfill --dry-run", tool="s3ferry"),
            Variant(label="s3ferry backfill --dry-run --shards 4", tool="s3ferry",
                    flags=("--shards", "4")),
            Variant(label="rclone copy --dry-run", tool="rclone", flags=RCLONE_DRY))


def full_plan(reps: int = 3) -> Plan:
    large = ObjectSet(name="large", count=16, size=64 * MIB)
    small = ObjectSet(name="small", count=5000, size=16 * KIB, dirs=20)
    giant = ObjectSet(name="giant", count=1, size=2 * GIB, seed_part_size=64 * MIB)
    keys = ObjectSet(name="keys", count=50_000, size=1, dirs=50)
    return Plan(
        name="full", reps=reps, worker_env=dict(WORKER_ENV),
        workloads=(
            _cross("W1", "large: 16 x 64 MiB, cross-endpoint", large, RCLONE_LARGE, 4),
            _cross("W2", "small: 5,000 x 16 KiB, cross-endpoint", small, RCLONE_SMALL, 200),
            _cross("W3", "giant: 1 x 2 GiB, cross-endpoint", giant, RCLONE_GIANT, 1, reps=5,
                   warm_up=True),
            _same("W4a", "same endpoint: W1 set, server-side", large, RCLONE_LARGE, 4, reps=9),
            _same("W4b", "same endpoint: W2 set, server-side", small, RCLONE_SMALL, 200,
                  reps=5),
            _scale(small, (1, 2, 4), 100),
        ),
        diff=DiffPlan(synthetic_keys=1_000_000, real=keys, variants=_diff_variants()),
        profile=("W1", "W2", "W3"),
    )


def smoke_plan() -> Plan:
    """A few small objects per workload, one repetition: proves the bench runs end to end."""
    large = ObjectSet(name="large", count=3, size=6 * MIB)
    small = ObjectSet(name="small", count=30, size=16 * KIB, dirs=3)
    giant = ObjectSet(name="giant", count=1, size=40 * MIB, seed_part_size=16 * MIB)
    keys = ObjectSet(name="keys", count=200, size=1, dirs=4)
    return Plan(
        name="smoke", reps=1, worker_env=dict(WORKER_ENV, S3FERRY_WORKER__WAIT_TIME_SECONDS="1"),
        workloads=(
            _cross("W1", "large (smoke)", large, RCLONE_LARGE, 3),
            _cross("W2", "small (smoke)", small, RCLONE_SMALL, 30),
            _cross("W3", "giant (smoke)", giant, RCLONE_GIANT, 1, warm_up=True),
            _same("W4a", "same endpoint: large (smoke)", large, RCLONE_LARGE, 3, reps=2),
            _same("W4b", "same endpoint: small (smoke)", small, RCLONE_SMALL, 30),
            _scale(small, (1, 2), 10),
        ),
        diff=DiffPlan(synthetic_keys=20_000, real=keys, variants=_diff_variants()),
    )
