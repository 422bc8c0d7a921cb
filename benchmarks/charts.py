"""Charts of the benchmark results (matplotlib, from the JSON files only):
coldstart.png from coldstart.json, readpath.png from readpath.json.

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
    fig.suptitle(
        f"Cold start: kserve-cache vs the usual shared-cache recipe "
        f"({meta.get('date', '')}, {meta.get('cpus', '?')} shared CPUs, local moto S3)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


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
    fig.suptitle(
        f"Read path from the cache to the model server ({meta.get('date', '')}, "
        f"{meta.get('cpus', '?')} shared CPUs, median of {meta.get('repeat', '?')} cold runs)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _median(row: dict[str, Any], key: str) -> float:
    values = sorted(r.get(key, 0.0) for r in row["runs"])
    return float(values[len(values) // 2]) if values else 0.0


CHARTS = {"coldstart": coldstart, "readpath": readpath}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the benchmark charts from their JSON.")
    parser.add_argument("names", nargs="*", default=list(CHARTS), help="coldstart, readpath")
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
        CHARTS[name](json.loads(source.read_text()), out)
        print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
