"""Medians, ratios and targets from the runs of one bench; JSON, markdown and a PNG chart.

Only verified runs count. Ratios are s3ferry's median over the peer's median, in the same
bench run (absolute times drift on this shared machine; ratios in one run hold). A ratio target
also shows how sure that ratio is: a 95% bootstrap interval (each tool's runs resampled), and
in how many repetitions s3ferry was the faster of the pair. A target whose interval holds its
limit is a tie at this bench's noise, whichever side of the limit the medians fell.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import median

MIB = 1024 * 1024
GIB = 1024 * MIB
STORES = ("global", "china")  # the S3 emulators ("queues" holds only s3ferry's job queues)
STORE_BOUND = 0.85  # share of a core the busiest store used over a run's wall time, at least


def busiest_store(run: dict[str, Any]) -> tuple[str, float] | None:
    """The S3 emulator that used the most CPU in a run, and how many seconds: on these two
    cores a store that was busy for about the whole wall time decided the run's time."""
    spent = run.get("server_cpu_by_emulator") or {}
    known = [(name, float(spent[name])) for name in STORES if spent.get(name) is not None]
    return max(known, key=lambda item: item[1]) if known else None


def _derived(run: dict[str, Any], metric: str) -> float | None:
    """A run's measured metric, or one derived from them: the busiest store's CPU seconds,
    and the wall time beyond them (the part of the wall the tool's own work can add)."""
    if metric not in ("store_cpu_seconds", "beyond_store_seconds"):
        return run.get(metric)
    store = busiest_store(run)
    if store is None or run.get("wall_seconds") is None:
        return None
    return store[1] if metric == "store_cpu_seconds" else run["wall_seconds"] - store[1]


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> variant -> medians over the verified runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["workload"], run["variant"])].append(run)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (wid, label), items in groups.items():
        good = [r for r in items if r["ok"]]
        row: dict[str, Any] = {"runs": len(items), "ok": len(good)}
        for metric in ("wall_seconds", "cpu_seconds", "peak_rss", "mib_per_second",
                       "objects_per_second", "cpu_seconds_per_gib", "keys_per_second",
                       "server_cpu_seconds", "server_kernel_seconds", "store_cpu_seconds",
                       "beyond_store_seconds"):
            values = [v for r in good if (v := _derived(r, metric)) is not None]
            if values:
                row[metric] = median(values)
                row[f"{metric}_all"] = values
        out[wid][label] = row
    return dict(out)


def by_position(runs: Sequence[dict[str, Any]],
                summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """workload -> for each place in a repetition's order (first, second, ...), the median
    over its verified runs of wall time / that variant's median wall time (from ``summary``,
    :func:`summarize` of the same runs). Every place near 1.0 means the order of the runs
    does not decide their times."""
    medians = {(wid, label): row.get("wall_seconds")
               for wid, rows in summary.items() for label, row in rows.items()}
    places: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        base = medians.get((run["workload"], run["variant"]))
        if run["ok"] and run.get("position") is not None and base:
            places[run["workload"]][run["position"]].append(run["wall_seconds"] / base)
    return {wid: [round(median(by[p]), 3) for p in sorted(by)]
            for wid, by in places.items() if len(by) > 1}


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float
    unit: str
    higher_is_better: bool = False
    interval: tuple[float, float] | None = None  # 95%, of a ratio (see ratio_interval)
    wins: tuple[int, int] | None = None  # (s3ferry faster, repetitions with both)

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        if self.higher_is_better:
            return self.measured >= self.limit
        return self.measured <= self.limit

    @property
    def margin(self) -> str:
        if self.met is None:
            return "not measured"
        assert self.measured is not None
        gap = abs(self.measured / self.limit - 1) * 100
        text = f"met with {gap:.0f}% to spare" if self.met else f"missed by {gap:.0f}%"
        if self.interval is not None and self.interval[0] <= self.limit <= self.interval[1]:
            text += " (a tie: the interval holds the limit)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "measured": self.measured, "limit": self.limit,
                "unit": self.unit, "met": self.met, "margin": self.margin,
                "interval": self.interval, "wins": self.wins}


def _get(summary: dict[str, Any], wid: str, label: str, metric: str) -> float | None:
    value = summary.get(wid, {}).get(label, {}).get(metric)
    return None if value is None else float(value)


def ratio(summary: dict[str, Any], wid: str, metric: str, peer: str,
          mine: str = "s3ferry") -> float | None:
    a, b = _get(summary, wid, mine, metric), _get(summary, wid, peer, metric)
    return None if a is None or not b else a / b


def ratio_interval(summary: dict[str, Any], wid: str, metric: str, peer: str,
                   mine: str = "s3ferry", *, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float] | None:
    """A 95% bootstrap interval of :func:`ratio`: each tool's runs drawn again with
    replacement, the ratio of the medians taken, the middle 95% of those ratios kept.
    Seeded, so one set of runs always gives one interval. None below 3 runs a side."""
    a = summary.get(wid, {}).get(mine, {}).get(f"{metric}_all") or []
    b = summary.get(wid, {}).get(peer, {}).get(f"{metric}_all") or []
    if len(a) < 3 or len(b) < 3:
        return None
    rng = random.Random(seed)
    ratios = sorted(median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b)))
                    for _ in range(resamples))
    return (round(ratios[int(0.025 * resamples)], 3),
            round(ratios[int(0.975 * resamples) - 1], 3))


def wins(runs: Sequence[dict[str, Any]], wid: str, peer: str,
         mine: str = "s3ferry") -> tuple[int, int] | None:
    """(repetitions where ``mine`` took less wall time than ``peer``, repetitions where both
    were verified): the pairs ran back to back, so this reads past drift between repetitions."""
    walls: dict[tuple[str, int], float] = {}
    for run in runs:
        if run["workload"] == wid and run["ok"] and run["rep"] >= 0:
            walls[(run["variant"], run["rep"])] = run["wall_seconds"]
    reps = sorted({rep for label, rep in walls if label == mine}
                  & {rep for label, rep in walls if label == peer})
    if not reps:
        return None
    return sum(walls[(mine, r)] < walls[(peer, r)] for r in reps), len(reps)


def _compared(summary: dict[str, Any], runs: Sequence[dict[str, Any]], wid: str, metric: str,
              peer: str, limit: float, name: str) -> Target:
    return Target(name, ratio(summary, wid, metric, peer), limit, "x",
                  interval=ratio_interval(summary, wid, metric, peer),
                  wins=wins(runs, wid, peer) if metric == "wall_seconds" else None)


def targets(summary: dict[str, Any], diff: dict[str, Any],
            runs: Sequence[dict[str, Any]] = ()) -> list[Target]:
    out = [_compared(summary, runs, w, "wall_seconds", "rclone", 1.0,
                     f"{w} wall time s3ferry / rclone") for w in ("W1", "W2", "W3")]
    out += [_compared(summary, runs, w, "wall_seconds", "s5cmd", 1.0,
                      f"{w} wall time s3ferry / s5cmd") for w in ("W4a", "W4b")]
    out += [_compared(summary, runs, w, "cpu_seconds_per_gib", "rclone", 2.0,
                      f"{w} CPU s per GiB s3ferry / rclone") for w in ("W1", "W3")]
    rss = _get(summary, "W3", "s3ferry", "peak_rss")
    out.append(Target("W3 worker peak RSS", None if rss is None else rss / MIB, 300, "MiB"))
    out.append(Target("W5 diff keys/s in process (CPU clock)", diff.get("keys_per_second"),
                      200_000, "keys/s", higher_is_better=True))
    out.append(Target("W5 diff keys/s in process incl. building Entry values (CPU clock)",
                      diff.get("entries_keys_per_second"), 200_000, "keys/s",
                      higher_is_better=True))
    peak = diff.get("peak_rss")
    out.append(Target("W5 diff peak RSS in process", None if peak is None else peak / MIB, 150,
                      "MiB"))
    return out


def synthetic_diff(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r["workload"] == "W5-synthetic" and r["ok"]]
    if not good:
        return {}
    rates = [r["details"]["keys_per_second"] for r in good]
    return {"keys": good[0]["details"]["keys"],
            "keys_per_second": median(x["diff_cpu"] for x in rates),
            "keys_per_second_wall": median(x["diff_wall"] for x in rates),
            "entries_keys_per_second": median(x["entries_and_diff_cpu"] for x in rates),
            "entries_keys_per_second_wall": median(x["entries_and_diff_wall"] for x in rates),
            "peak_rss": median(r["details"]["peak_rss"] for r in good),
            "rss_after_imports": median(r["details"]["rss_after_imports"] for r in good)}


# -- profiles ------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def top_self(raw: str, n: int = 15) -> list[dict[str, Any]]:
    """Functions ranked by self samples, from py-spy's ``--format raw`` collapsed stacks."""
    self_samples: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        match = _FRAME.match(leaf)
        name = f"{match['func']} ({_short(match['file'])})" if match else leaf
        self_samples[name] += int(count)
        total += int(count)
    return [{"function": name, "samples": c, "percent": round(100 * c / total, 1)}
            for name, c in self_samples.most_common(n)] if total else []


def _short(path: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- output --------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _more_reps(report: dict[str, Any]) -> str:
    more = {w: n for w, n in report.get("reps_by_workload", {}).items() if n > report["reps"]}
    if not more:
        return ""
    return " (" + ", ".join(f"{w}: {n}" for w, n in sorted(more.items())) + ")"


def markdown(report: dict[str, Any]) -> str:
    summary, lines = report["summary"], []
    lines.append(f"# s3ferry bench ({report['plan']}, {report['started']})\n")
    lines.append(f"{report['environment']['cpus']} CPUs shared with the emulators and other "
                 f"work; load average at start {report['environment']['loadavg_start']}, at "
                 f"end {report['environment']['loadavg_end']}. Medians of "
                 f"{report['reps']} interleaved repetitions{_more_reps(report)}; only verified "
                 f"runs count.\n")
    gc = report["environment"].get("emulator_gc")
    if gc and gc["full_collections"]:  # the bench's own bed logs them (not the tests' bed)
        lines.append(f"The emulators freeze their heap after each full garbage collection "
                     f"(bench/emulator): {gc['full_collections']} full collections, the "
                     f"longest paused {gc['max_pause_seconds']} s, "
                     f"{gc['pauses_over_100ms']} over 0.1 s.\n")
    rest = report["environment"].get("settled")
    if rest and rest["runs"]:
        lines.append(f"Each run started once the emulators had used under "
                     f"{rest['quiet_cores']} core for {rest['window_seconds']} s (so work left "
                     f"from the run before cannot land in the next one): waits median "
                     f"{rest['median_seconds']} s, longest {rest['max_seconds']} s; "
                     f"{rest['not_quiet']} runs started at the limit without rest.\n")
    warmed = report["environment"].get("warmed")
    if warmed and warmed["runs"]:
        lines.append(f"Before each clock the stored objects and the peers' executables were "
                     f"read into the page cache (this VM pages out file pages left unread "
                     f"for ~30 s): up to {warmed['max_bytes'] / GIB:.2f} GiB, median "
                     f"{warmed['median_seconds']} s, longest {warmed['max_seconds']} s.\n")
    warm_ups = report.get("warm_ups") or []
    if warm_ups:
        by = sorted({r["workload"] for r in warm_ups})
        lines.append(f"An untimed run of the baseline opened each repetition of "
                     f"{', '.join(by)} ({len(warm_ups)} runs, "
                     f"{sum(not r['ok'] for r in warm_ups)} failed).\n")
    places = report.get("positions") or {}
    if places:
        lines.append("Order check, wall / the variant's median by place in a repetition "
                     "(first, second, ...): " + "; ".join(
                         f"{wid} " + " ".join(f"{x:.2f}" for x in xs)
                         for wid, xs in places.items()) + ".\n")
    lines.append("`s3ferry` is a deployed fleet: its workers and `s3ferry serve` run before the "
                 "clock starts, and the clock runs from `s3ferry backfill --server` until every "
                 "job is acknowledged. `s3ferry cold` starts the worker and `s3ferry backfill` "
                 "processes with the clock (their Python start and imports included). Targets "
                 "use `s3ferry`; CPU seconds include every s3ferry process's start either way. "
                 "Servers' CPU s: what the emulators (S3, and s3ferry's queue) used from the "
                 "clock's start until the run's processes stopped: what a run cost the "
                 "endpoints; in brackets the kernel's part of it, which moves the most from "
                 "run to run on this VM (bench/README). Each run's destination is deleted "
                 "just before the next run's clock starts, after that run's setup.\n")
    lines += _copy_table(report)
    lines += _store_table(report)
    lines += _diff_table(report)
    lines += _scale_table(summary)
    lines.append("\n## Targets\n")
    lines.append("The interval: 95% bootstrap interval of the ratio of medians. Faster in: "
                 "repetitions where s3ferry took less wall time than the peer run next to "
                 "it.\n")
    lines.append("| target | measured | limit | met | margin | interval | faster in |")
    lines.append("|---|---:|---:|:-:|---|---|--:|")
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        interval = t.get("interval")
        span = "-" if not interval else f"{interval[0]:.2f}-{interval[1]:.2f}"
        won = t.get("wins")
        lines.append(f"| {t['name']} | {_fmt(t['measured'])} {t['unit']} | {t['limit']:,} "
                     f"{t['unit']} | {met} | {t['margin']} | {span} | "
                     f"{'-' if not won else f'{won[0]}/{won[1]}'} |")
    for wid, prof in report.get("profiles", {}).items():
        lines.append(f"\n## Profile: s3ferry worker during {wid} (py-spy, self time)\n")
        if not prof.get("top"):
            lines.append(f"not captured: {prof.get('error', 'no samples')}")
            continue
        lines.append(f"{prof['samples']} samples; flame graph input: `{prof['raw']}`\n")
        lines.append("| % | samples | function |")
        lines.append("|---:|---:|---|")
        lines += [f"| {p['percent']} | {p['samples']} | `{p['function']}` |"
                  for p in prof["top"]]
    failed = [r for r in report["runs"] if not r["ok"]]
    if failed:
        lines.append("\n## Runs that did not count\n")
        lines += [f"- {r['workload']} {r['variant']} rep {r['rep']}: {r['error'][:300]}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def _copy_table(report: dict[str, Any]) -> list[str]:
    summary = report["summary"]
    lines = ["## Copies\n",
             "| workload | tool | ok | wall s | MiB/s | objects/s | CPU s | CPU s/GiB | "
             "peak RSS MiB | servers' CPU s (kernel) | wall / peer | CPU / peer |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for wl in report["workloads"]:
        if wl["baseline"] is None:
            continue
        for label, row in summary.get(wl["id"], {}).items():
            peer = wl["baseline"]
            mine = label.startswith("s3ferry")
            wall = ratio(summary, wl["id"], "wall_seconds", peer, label) if mine else None
            cpu = ratio(summary, wl["id"], "cpu_seconds", peer, label) if mine else None
            rss = row.get("peak_rss")
            lines.append(
                f"| {wl['id']} {wl['title']} | {label} | {row['ok']}/{row['runs']} | "
                f"{_fmt(row.get('wall_seconds'))} | {_fmt(row.get('mib_per_second'), 1)} | "
                f"{_fmt(row.get('objects_per_second'), 1)} | {_fmt(row.get('cpu_seconds'))} | "
                f"{_fmt(row.get('cpu_seconds_per_gib'))} | "
                f"{_fmt(None if rss is None else rss / MIB, 0)} | "
                f"{_servers(row)} | {_fmt(wall)} | {_fmt(cpu)} |")
    return lines


def store_bound(rows: dict[str, dict[str, Any]]) -> bool:
    """Every tool's median wall time was spent with the busiest store at 0.85 to 1 core: the
    store's one interpreter was the bottleneck, whichever tool asked."""
    shares = [row["store_cpu_seconds"] / row["wall_seconds"] for row in rows.values()
              if row.get("store_cpu_seconds") is not None and row.get("wall_seconds")]
    return len(shares) == len(rows) > 1 and all(STORE_BOUND <= x <= 1.0 for x in shares)


def _store_table(report: dict[str, Any]) -> list[str]:
    """For the store-bound workloads, each tool's wall time against the busiest store's CPU."""
    lines = []
    for wl in report["workloads"]:
        rows = report["summary"].get(wl["id"], {})
        if wl["baseline"] is None or not store_bound(rows):
            continue
        names = Counter(store[0] for r in report["runs"] if r["workload"] == wl["id"]
                        and r["ok"] and (store := busiest_store(r)) is not None)
        lines += [f"| {wl['id']} | {label} | {_fmt(row['wall_seconds'])} | "
                  f"{names.most_common(1)[0][0]} {_fmt(row['store_cpu_seconds'])} | "
                  f"{_fmt(row['beyond_store_seconds'])} |" for label, row in rows.items()]
    if not lines:
        return []
    return ["\n## Store-bound workloads\n",
            f"Workloads where, for every tool, the busiest store (the S3 emulator that used the "
            f"most CPU in a run) was busy {STORE_BOUND} to 1 core for the whole wall time "
            f"(medians). A store's Python work runs on one core at a time (one interpreter): "
            f"there the store decided the time, and the ratio of walls moves with the store's "
            f"CPU per request, which moves from run to run on this VM whichever tool asked. "
            f"Beyond it: wall time minus the store's CPU seconds (median over runs), what the "
            f"tool's own start and end, and the store's waits for a CPU, added.\n",
            "| workload | tool | wall s | busiest store, CPU s | beyond it s |",
            "|---|---|--:|--:|--:|", *lines]


def _servers(row: dict[str, Any]) -> str:
    cpu, kernel = row.get("server_cpu_seconds"), row.get("server_kernel_seconds")
    return _fmt(cpu) + ("" if kernel is None else f" ({_fmt(kernel)})")


def _diff_table(report: dict[str, Any]) -> list[str]:
    diff, summary = report.get("diff", {}), report["summary"]
    lines = ["\n## W5 diff\n"]
    if not diff:
        return [*lines, "not available (no verified W5 run)"]
    lines.append(f"In process, {diff['keys']:,} synthetic keys (Mode.SIZE, 10% missing, "
                 f"~13% size differs): **{_fmt(diff['keys_per_second'], 0)} keys/s** on the "
                 f"CPU clock ({_fmt(diff['keys_per_second_wall'], 0)} on the wall clock); "
                 f"including building the `Entry` values: "
                 f"{_fmt(diff['entries_keys_per_second'], 0)} keys/s CPU "
                 f"({_fmt(diff['entries_keys_per_second_wall'], 0)} wall); peak RSS "
                 f"{_fmt(diff['peak_rss'] / MIB, 1)} MiB "
                 f"({_fmt(diff['rss_after_imports'] / MIB, 1)} MiB after imports).\n")
    lines.append("| real keys listed + diffed | ok | wall s | keys/s | CPU s | peak RSS MiB |")
    lines.append("|---|--:|--:|--:|--:|--:|")
    for label, row in summary.get("W5-real", {}).items():
        rss = row.get("peak_rss")
        lines.append(f"| {label} | {row['ok']}/{row['runs']} | "
                     f"{_fmt(row.get('wall_seconds'))} | "
                     f"{_fmt(row.get('keys_per_second'), 0)} | {_fmt(row.get('cpu_seconds'))} "
                     f"| {_fmt(None if rss is None else rss / MIB, 0)} |")
    return lines


def _scale_table(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("W6", {})
    if not rows:
        return []
    lines = ["\n## W6 scale-out (W2 set)\n",
             "| workers | ok | wall s | objects/s | objects/s per worker | CPU s | "
             "peak RSS MiB (one worker) |", "|--:|--:|--:|--:|--:|--:|--:|"]
    for label, row in sorted(rows.items(), key=lambda kv: int(kv[0].split("x")[-1])):
        n = int(label.split("x")[-1])
        ops = row.get("objects_per_second")
        rss = row.get("peak_rss")
        lines.append(f"| {n} | {row['ok']}/{row['runs']} | {_fmt(row.get('wall_seconds'))} | "
                     f"{_fmt(ops, 1)} | {_fmt(None if ops is None else ops / n, 1)} | "
                     f"{_fmt(row.get('cpu_seconds'))} | "
                     f"{_fmt(None if rss is None else rss / MIB, 0)} |")
    return lines


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    pairs = [(w["id"], w["baseline"]) for w in report["workloads"] if w["baseline"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5),
                                      gridspec_kw={"width_ratios": [2, 1]})
    xs = range(len(pairs))
    walls = [ratio(summary, w, "wall_seconds", p) or 0 for w, p in pairs]
    cpus = [ratio(summary, w, "cpu_seconds", p) or 0 for w, p in pairs]
    left.bar([x - 0.2 for x in xs], walls, 0.4, label="wall time")
    left.bar([x + 0.2 for x in xs], cpus, 0.4, label="CPU seconds")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(2.0, color="grey", linewidth=0.8, linestyle="--")
    left.set_xticks(list(xs), [f"{w}\nvs {p}" for w, p in pairs])
    left.set_ylabel("s3ferry / peer (lower is better)")
    left.set_title("Ratios per workload (medians, same run)")
    left.legend()
    scale = summary.get("W6", {})
    points = sorted((int(k.split("x")[-1]), v.get("objects_per_second") or 0)
                    for k, v in scale.items())
    if points:
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        right.set_xticks([p[0] for p in points])
    right.set_xlabel("workers on one queue")
    right.set_ylabel("objects/s")
    right.set_title("W6 scale-out (W2 set)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md",
             "chart": out_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(report))
    chart(report, paths["chart"])
    return paths
