"""Charts of the committed benchmark results (matplotlib, from the JSON files only):
benchmarks/results/coldstart.png from coldstart.json.

    .venv/bin/python benchmarks/charts.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"

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


def main() -> int:
    source = RESULTS / "coldstart.json"
    if not source.exists():
        print(f"{source} not found: run benchmarks/coldstart/run.py first", file=sys.stderr)
        return 1
    out = RESULTS / "coldstart.png"
    coldstart(json.loads(source.read_text()), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
