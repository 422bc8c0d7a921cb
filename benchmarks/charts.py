"""Charts of the benchmark results (matplotlib, from the JSON files only):
coldstart.png from coldstart.json, readpath.png from readpath.json, admission.png from
admission.json.

    .venv/bin/python benchmarks/charts.py                      # benchmarks/results/*.png
    .venv/bin/python benchmarks/charts.py --results DIR readpath
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE / "readpath"))

TIMES = [
    ("plain_download_s", "miss: plain kserve-storage download", "#bbbbbb"),
    ("fetch_miss_s", "miss: kserve-cache fetch", "#1f77b4"),
    ("fetch_hit_mount_s", "hit, mount mode (fetch process)", "#2ca02c"),
    ("fetch_hit_copy_s", "hit, copy mode (fetch --copy-to)", "#98df8a"),
    ("recipe_hit_cp_s", "usual recipe hit (cp -r)", "#ff7f0e"),
]


def _failed(count: int) -> str:
    return "all 8 ok" if count == 0 else f"{count} of 8 failed"


def coldstart(data: dict[str, Any], out: Path) -> None:
    rows = data["rows"]
    sizes = [row["size"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), width_ratios=[3, 2])

    width = 0.8 / len(TIMES)
    for index, (key, label, color) in enumerate(TIMES):
        xs = [i + (index - (len(TIMES) - 1) / 2) * width for i in range(len(rows))]
        values = [row[key] for row in rows]
        bars = left.bar(xs, values, width, label=label, color=color)
        left.bar_label(bars, labels=[f"{v:.2g}" for v in values], fontsize=7, padding=2)
    left.set_yscale("log")
    left.set_xticks(range(len(rows)), sizes)
    left.set_xlabel("model size")
    left.set_ylabel("wall time of one pod's init step, s (log)")
    left.set_title("One cold start")
    left.legend(fontsize=8, loc="upper left")

    width = 0.35
    fetch = [row["fetch_8pods_pulled_bytes"] / 1e6 for row in rows]
    recipe = [row["recipe_8pods_pulled_bytes"] / 1e6 for row in rows]
    bars = right.bar([i - width / 2 for i in range(len(rows))], fetch, width, color="#1f77b4")
    right.bar_label(bars, labels=[_failed(r["fetch_8pods_failed"]) for r in rows], fontsize=7)
    bars = right.bar([i + width / 2 for i in range(len(rows))], recipe, width, color="#ff7f0e")
    right.bar_label(bars, labels=[_failed(r["recipe_8pods_failed"]) for r in rows], fontsize=7)
    right.set_yscale("log")
    right.set_xticks(range(len(rows)), sizes)
    right.set_xlabel("model size")
    right.set_ylabel("MB pulled from the object store (log)")
    right.set_title("8 pods starting at once on an empty cache")
    right.legend(["kserve-cache fetch", "usual recipe (no lock)"], fontsize=8, loc="upper left")

    meta = data.get("meta", {})
    _finish(
        fig,
        out,
        f"Cold start: kserve-cache vs the usual shared-cache recipe "
        f"({meta.get('date', '')}, {meta.get('cpus', '?')} shared CPUs, local moto S3)",
    )


PHASES = [
    ("prefetch_s", "prefetch (init container)", "#9467bd"),
    ("copy_s", "copy (init container)", "#ff7f0e"),
    ("load_s", "model server's read", "#1f77b4"),
]


def readpath(data: dict[str, Any], out: Path) -> None:
    """One panel per filesystem: seconds to model loaded per method (phases stacked), and the
    time the volume's sequential ceiling would take for the same bytes."""
    from methods import label  # benchmarks/readpath/methods.py: the methods' names

    filesystems = data["filesystems"]
    fig, axes = plt.subplots(
        1, len(filesystems), figsize=(4.5 * len(filesystems) + 3.5, 6), squeeze=False, sharey=True
    )
    for number, (ax, fs) in enumerate(zip(axes[0], filesystems, strict=True)):
        rows = fs["methods"]
        names = [label(r["method"]) for r in rows]
        left = [0.0] * len(rows)
        for key, name, color in PHASES:
            values = [_median(r, key) for r in rows]
            if not any(values):
                continue
            ax.barh(names, values, left=left, color=color, label=name)
            left = [a + b for a, b in zip(left, values, strict=True)]
        for index, (total, row) in enumerate(zip(left, rows, strict=True)):
            # the label is the median of the whole runs (the bars: medians of each phase)
            ax.text(total, index, f" {row['median_s']:.2f} s", va="center", fontsize=7)
        ideal = fs["model"]["bytes"] / 1e6 / fs["ceiling_mb_s"]
        ax.axvline(ideal, color="#d62728", linestyle="--", linewidth=1)
        ax.text(
            ideal,
            -0.6,
            f" dd ceiling {fs['ceiling_mb_s']:,.0f} MB/s",
            color="#d62728",
            fontsize=7,
            va="bottom",
        )
        if number == 0:
            ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.25)
        ax.set_xlabel("seconds to model loaded (cold cache)")
        ax.set_title(f"{fs['name']}: {fs['model']['bytes'] / 1e9:.2f} GB model", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        if number == len(filesystems) - 1:
            handles, names_ = ax.get_legend_handles_labels()
            fig.legend(handles, names_, loc="lower center", ncol=len(handles), fontsize=8)
    meta = data.get("meta", {})
    _finish(
        fig,
        out,
        f"Read path from the cache to the model server ({meta.get('date', '')}, "
        f"{meta.get('cpus', '?')} shared CPUs, median of {meta.get('repeat', '?')} cold runs)",
        rect=(0, 0.05, 1, 1),
    )


def _finish(fig: Any, out: Path, title: str, rect: tuple[float, ...] | None = None) -> None:
    """Title, layout, write the PNG, free the figure."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _median(row: dict[str, Any], key: str) -> float:
    values = sorted(r.get(key, 0.0) for r in row["runs"])
    return float(values[len(values) // 2]) if values else 0.0


ADMISSION_RUNS = [
    ("parse-floor:credentials", "raw-ASGI parse floor", "#bbbbbb"),
    ("mutate:credentials", "/mutate, the pod repeated (memo)", "#1f77b4"),
    ("mutate:credentials-distinct", "/mutate, 1,000 distinct pods (full review)", "#ff7f0e"),
]


def admission(data: dict[str, Any], out: Path) -> None:
    """One worker: throughput at saturation of the credentials pod against the parse floor
    (median of the runs, share of the floor), and p99 at each fixed rate with `wrk` paced."""
    config = next((c for c in data["configs"] if c["workers"] == 1 and c.get("parse_floor")), None)
    if config is None:
        raise ValueError("no one-worker run with the parse floor: run.py --workers 1 makes one")
    runs = config["parse_floor"]["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    floor = _median_of([r["rate"] for r in runs["parse-floor:credentials"]])
    names, rates, colors = [], [], []
    for key, name, color in ADMISSION_RUNS:
        if key in runs:
            names.append(name)
            rates.append(_median_of([r["rate"] for r in runs[key]]))
            colors.append(color)
    left.barh(names, rates, color=colors)
    for index, rate in enumerate(rates):
        left.text(
            rate,
            index,
            f" {rate:,.0f}/s ({rate / floor:.0%} of the floor's median)",
            va="center",
            fontsize=8,
        )
    left.axvline(floor / 2, color="#d62728", linestyle="--", linewidth=1)
    left.text(floor / 2, -0.6, " target: half the floor", color="#d62728", fontsize=7)
    left.invert_yaxis()
    left.set_xlim(0, max(rates) * 1.35)
    left.set_xlabel("admissions/s at saturation, one worker, TLS (median of the runs)")
    left.tick_params(axis="y", labelsize=8)
    paced = config.get("paced", [])
    rates_fixed = sorted({r["target_rate"] for r in paced})
    width = 0.8 / len(ADMISSION_RUNS)
    for number, (key, name, color) in enumerate(ADMISSION_RUNS):
        p99s = [
            _median_of(
                [r["p99_ms"] for r in paced if r["endpoint"] == key and r["target_rate"] == t]
            )
            for t in rates_fixed
        ]
        xs = [i + (number - 1) * width for i in range(len(rates_fixed))]
        right.bar(xs, p99s, width=width, color=color, label=name)
        for x, value in zip(xs, p99s, strict=True):
            right.text(x, value, f"{value:.1f}", ha="center", va="bottom", fontsize=7)
    right.axhline(5.0, color="#d62728", linestyle="--", linewidth=1)
    right.text(-0.45, 5.0, "target 5 ms", color="#d62728", fontsize=7, va="bottom")
    right.set_xticks(range(len(rates_fixed)), [f"{t:.0f}/s" for t in rates_fixed])
    right.set_ylabel("p99 latency, ms (median of the runs, wrk paced)")
    right.legend(fontsize=7)
    _finish(
        fig,
        out,
        f"Admission, KServe pod with S3 credentials ({data.get('when', '')}, "
        f"{data.get('machine', {}).get('cpus', '?')} shared CPUs, commit {data.get('commit', '')})",
    )


def _median_of(values: list[float]) -> float:
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2]) if ordered else 0.0


CHARTS = {"coldstart": coldstart, "readpath": readpath, "admission": admission}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the benchmark charts from their JSON.")
    parser.add_argument(
        "names", nargs="*", default=list(CHARTS), help="coldstart, readpath, admission"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON files")
    args = parser.parse_args(argv)
    code = 0
    for name in args.names:
        source = args.results / f"{name}.json"
        if not source.exists():
            print(f"{source} not found: run benchmarks/{name}/run.py first", file=sys.stderr)
            code = 1
            continue
        out = args.results / f"{name}.png"
        try:
            CHARTS[name](json.loads(source.read_text()), out)
        except ValueError as exc:
            print(f"{source}: {exc}", file=sys.stderr)
            code = 1
            continue
        print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
