"""How sure a bench ratio is: the bootstrap interval and the paired wins beside each target."""

from __future__ import annotations

from typing import Any

from bench import report


def run(variant: str, rep: int, wall: float, ok: bool = True) -> dict[str, Any]:
    return {"workload": "W4b", "variant": variant, "rep": rep, "ok": ok, "wall_seconds": wall,
            "cpu_seconds": 1.0}


def target(runs: list[dict[str, Any]]) -> report.Target:
    summary = report.summarize(runs)
    [w4b] = [t for t in report.targets(summary, {}, runs) if t.name.startswith("W4b")]
    return w4b


def test_a_clear_lead_is_met_and_its_interval_stays_below_the_limit() -> None:
    runs = [run("s3ferry", r, 10.0 + r * 0.1) for r in range(7)]
    runs += [run("s5cmd", r, 12.0 + r * 0.1) for r in range(7)]

    t = target(runs)

    assert t.met and t.interval is not None and t.interval[1] < 1.0
    assert t.wins == (7, 7)
    assert "tie" not in t.margin


def test_overlapping_runs_are_called_a_tie_whichever_side_the_medians_fall() -> None:
    mine = [10.0, 11.6, 10.4, 12.2, 10.9, 11.1, 12.0]
    peer = [11.0, 10.2, 11.8, 10.6, 12.1, 10.8, 11.3]
    runs = [run("s3ferry", r, w) for r, w in enumerate(mine)]
    runs += [run("s5cmd", r, w) for r, w in enumerate(peer)]

    t = target(runs)

    assert t.measured is not None and t.met is False  # 11.1 / 11.0: missed by 1%
    assert t.interval is not None and t.interval[0] < 1.0 < t.interval[1]
    assert t.margin == "missed by 1% (a tie: the interval holds the limit)"
    assert t.wins == (3, 7)
    # seeded: the same runs give the same interval
    assert target(runs).interval == t.interval


def test_wins_count_only_repetitions_where_both_were_verified() -> None:
    runs = [run("s3ferry", 0, 9.0), run("s5cmd", 0, 10.0),
            run("s3ferry", 1, 9.0), run("s5cmd", 1, 8.0, ok=False),
            run("s3ferry", 2, 11.0), run("s5cmd", 2, 10.0),
            run("s3ferry", -1, 1.0)]  # a profile's run: no repetition of its own

    assert report.wins(runs, "W4b", "s5cmd") == (1, 2)
    assert report.wins(runs, "W1", "rclone") is None
    assert report.ratio_interval(report.summarize(runs), "W4b", "wall_seconds",
                                 "s5cmd") is None  # fewer than 3 verified runs a side


def test_the_markdown_shows_the_interval_and_the_wins() -> None:
    runs = [run("s3ferry", r, 10.0 + r) for r in range(3)]
    runs += [run("s5cmd", r, 10.5 + r) for r in range(3)]
    summary = report.summarize(runs)
    rows = [t.as_dict() for t in report.targets(summary, {}, runs)]
    text = report.markdown({"plan": "t", "started": "now", "reps": 3, "summary": summary,
                            "environment": {"cpus": 2, "loadavg_start": [], "loadavg_end": []},
                            "targets": rows, "runs": runs, "workloads": []})

    [line] = [x for x in text.splitlines() if x.startswith("| W4b wall time")]
    interval = rows[4]["interval"]
    assert f"| {interval[0]:.2f}-{interval[1]:.2f} | 3/3 |" in line


def test_the_busiest_store_and_the_wall_beyond_it() -> None:
    def copy(variant: str, rep: int, wall: float, store: float) -> dict[str, Any]:
        return {**run(variant, rep, wall), "server_cpu_by_emulator": {
            "global": store, "china": 0.01, "queues": 0.3}}
    runs = [copy("s3ferry", 0, 12.0, 11.7), copy("s3ferry", 1, 9.0, 8.8),
            copy("s3ferry", 2, 10.0, 9.6), copy("s5cmd", 0, 11.0, 10.6),
            copy("s5cmd", 1, 10.0, 9.7), copy("s5cmd", 2, 9.5, 9.2),
            {**run("rclone", 0, 30.0), "server_cpu_by_emulator": {}},  # not measured
            {**run("rclone", 1, 29.0), "server_cpu_by_emulator": {"global": 28.5}}]

    summary = report.summarize(runs)

    assert report.busiest_store(runs[0]) == ("global", 11.7)
    assert summary["W4b"]["s3ferry"]["store_cpu_seconds"] == 9.6
    assert [round(x, 2) for x in summary["W4b"]["s3ferry"]["beyond_store_seconds_all"]] == [
        0.3, 0.2, 0.4]
    assert round(summary["W4b"]["s5cmd"]["beyond_store_seconds"], 2) == 0.3
    assert summary["W4b"]["rclone"]["beyond_store_seconds_all"] == [0.5]  # one of two measured
    text = report.markdown({"plan": "t", "started": "now", "reps": 3, "summary": summary,
                            "environment": {"cpus": 2, "loadavg_start": [], "loadavg_end": []},
                            "targets": [], "runs": runs,
                            "workloads": [{"id": "W4b", "title": "small", "baseline": "s5cmd"}]})
    assert "| W4b | s3ferry | 10.00 | global 9.60 | 0.30 |" in text
    assert "| W4b | s5cmd | 10.00 | global 9.70 | 0.30 |" in text
    assert "| W4b | rclone | 29.50 | global 28.50 | 0.50 |" in text


def test_a_workload_is_store_bound_only_when_every_tool_kept_the_store_near_a_core() -> None:
    def row(wall: float, store: float) -> dict[str, Any]:
        return {"wall_seconds": wall, "store_cpu_seconds": store}

    assert report.store_bound({"s3ferry": row(10.0, 9.5), "s5cmd": row(11.0, 10.8)})
    # the peer left the store idle a third of the time: its own work decided its time
    assert not report.store_bound({"s3ferry": row(10.0, 9.5), "rclone": row(30.0, 20.0)})
    # more CPU than wall: the store worked outside its interpreter (kernel, other threads)
    assert not report.store_bound({"s3ferry": row(1.5, 2.5), "s5cmd": row(1.7, 1.6)})
    assert not report.store_bound({"s3ferry": row(10.0, 9.5), "s5cmd": {"wall_seconds": 9.0}})
