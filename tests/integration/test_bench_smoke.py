"""The bench still runs end to end: a few small objects per workload, one repetition.

No timing decides this test: it checks that every tool ran, every copy was verified, and the
report (JSON, markdown, PNG) was written with a row for every workload and target.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import run_bench
from bench.tools import peer_binaries
from bench.workloads import smoke_plan
from s3ferry.localbed import LocalBed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_bench_smoke_runs_every_workload_and_writes_the_report(bed: LocalBed,
                                                                tmp_path: Path) -> None:
    plan = smoke_plan()
    servers = {name: bed.servers[name] for name in ("global", "china")}
    groups = {name: pgid for name, pgid in bed.process_groups().items() if name in servers}
    report = run_bench(servers, plan, out_dir=tmp_path / "results", workdir=tmp_path / "work",
                       log=lambda _: None, stem="smoke", emulators=groups)

    failed = [(r["workload"], r["variant"], r["error"]) for r in report["runs"] if not r["ok"]]
    assert failed == []
    ran = {(r["workload"], r["variant"]) for r in report["runs"]}
    # W4a asks for more repetitions than the plan's one; the others run once
    assert report["reps_by_workload"] == {w: 2 if w == "W4a" else 1 for w in
                                          ("W1", "W2", "W3", "W4a", "W4b", "W6",
                                           "W5-real", "W5-synthetic")}
    expected = {(w.id, v.label) for w in plan.workloads for v in w.variants}
    assert plan.diff is not None
    expected |= {("W5-real", v.label) for v in plan.diff.variants}
    expected |= {("W5-synthetic", "dispatcher.diff.diff")}
    assert ran == expected
    # W3's repetition opened with an untimed baseline run, kept apart from the counted ones
    assert [(r["workload"], r["tool"], r["ok"], r["warm_up_of"]) for r in report["warm_ups"]] \
        == [("W3", "rclone", True, 0)]
    binaries = sum(p.stat().st_size for p in peer_binaries())
    seeded_files = sum({w.objects.name: w.objects.total_bytes for w in plan.workloads
                        if w.objects.name in ("large", "giant")}.values())
    for run in report["runs"]:
        if run["workload"].startswith("W5"):
            continue
        objects = next(w.objects for w in plan.workloads if w.id == run["workload"])
        assert run["verify"]["objects"] == objects.count
        assert run["verify"]["bytes"] == objects.total_bytes
        assert run["cpu_seconds"] > 0 and run["peak_rss"] > 0
        assert run["settled"]["seconds"] > 0  # it waited for the emulators to be at rest
        # the stored objects (the large and giant sets are files in the emulators) and the
        # peers' executables were read into memory before the clock
        assert run["warmed"]["bytes"] >= binaries + seeded_files
        assert run["position"] in range(len(next(
            w for w in plan.workloads if w.id == run["workload"]).variants))
        # what the run cost the servers: the copies' endpoint worked, whichever tool asked
        assert set(run["server_cpu_by_emulator"]) == set(groups)
        assert run["server_cpu_by_emulator"]["global"] > 0
        assert 0 <= run["server_kernel_seconds"] <= run["server_cpu_seconds"]
        if run["tool"] == "s3ferry":  # a fleet's backfill went through s3ferry serve
            assert ("serve" in run["processes"]) == (run["variant"] != "s3ferry cold")
            assert run["details"]["backfill"]["enqueued"]["jobs"] == {"copy": objects.count}

    files = {kind: Path(path) for kind, path in report["files"].items()}
    assert json.loads(files["json"].read_text())["plan"] == "smoke"
    assert files["chart"].read_bytes().startswith(b"\x89PNG")
    table = files["markdown"].read_text()
    for target in report["targets"]:
        assert target["name"] in table
    assert "W3 worker peak RSS" in table and "## W6 scale-out" in table
    assert "servers' CPU s" in table
    assert "started once the emulators had used under" in table
    assert "read into the page cache" in table and "Order check" in table
    assert "An untimed run of the baseline opened each repetition of W3" in table
    assert "Medians of 1 interleaved repetitions (W4a: 2)" in table
