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
