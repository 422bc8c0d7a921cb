"""Read-path benchmark: the time from a published cache entry to "model loaded", per method.

A model of safetensors files (a few large shards, many small files) is written once on each
filesystem; each method then reads all of it from a cold page cache (caches dropped, FUSE
clients remounted) and is timed: mount mode read by one sequential reader (1 MiB and 16 MiB
reads), by N parallel readers, by an mmap reader touching the tensors in the order a
safetensors loader does, after a prefetch; copy mode (the init container's copy, then the
server's read of the local copy). The volume's raw sequential throughput (`dd bs=16M`, cold) is
the ceiling. Writes readpath.{json,md,png} into --out (default: a new temp folder;
`--out benchmarks/results` replaces the committed results).

    .venv/bin/python benchmarks/readpath/run.py --out benchmarks/results
    .venv/bin/python benchmarks/readpath/run.py --fs local --size 256M --repeat 1   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "benchmarks")]

from methods import READERS, copy_before, label, read_parallel, read_sequential  # noqa: E402
from model import make_model, model_files  # noqa: E402

from webhook.cache.copy import DEFAULT_BLOCK_SIZE, DEFAULT_WORKERS, copy_manifest_files  # noqa: E402
from webhook.cache.layout import FileEntry, Manifest  # noqa: E402
from webhook.cache.prefetch import prefetch_manifest_files  # noqa: E402

MiB = 1 << 20
RESULTS = REPO / "benchmarks" / "results"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("I").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# cold caches ---------------------------------------------------------------------------------


def drop_caches() -> str:
    """Drop the kernel's page cache; the way used ('drop_caches' or why it failed)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"failed: {exc}"
    return "drop_caches"


def fadvise_dontneed(root: Path) -> None:
    """Where caches cannot be dropped: ask the kernel to forget these files' pages."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@dataclass
class Target:
    """One filesystem: where the model is read from, and how its caches are made cold."""

    name: str
    description: str
    volume: Path
    emptydir: Path
    recold: Callable[[], None]
    cold_method: str = ""
    drop: bool = True

    def cold(self) -> None:
        self.recold()
        if not self.drop:
            fadvise_dontneed(self.volume)
            self.cold_method = "posix_fadvise(DONTNEED) (--cold fadvise)"
            return
        method = drop_caches()
        if method != "drop_caches":
            fadvise_dontneed(self.volume)
            method = "posix_fadvise(DONTNEED) (drop_caches " + method + ")"
        self.cold_method = method


@contextlib.contextmanager
def local_target(work: Path) -> Iterator[Target]:
    yield Target(
        name="local",
        description=f"local filesystem ({_fstype(work)}, the machine's disk)",
        volume=work / "local-volume",
        emptydir=work / "local-emptydir",
        recold=lambda: None,
    )


@contextlib.contextmanager
def gluster_target(work: Path) -> Iterator[Target]:
    """A private GlusterFS volume (tests/netfs harness): one brick on loopback, FUSE clients;
    the model is read through client 0, and the clients are remounted before every cold run
    (the FUSE client keeps caches of its own in user space)."""
    from tests.netfs.gluster import gluster_volume, unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"gluster: {reason}")
    with gluster_volume() as volume:
        client0 = volume.configure({})[0]

        def remount() -> None:
            volume.unmount_all()
            volume.configure(volume.options)

        yield Target(
            name="gluster",
            description="GlusterFS 1-brick volume on loopback, read through its FUSE client",
            volume=client0,  # remounted at the same path
            emptydir=work / "gluster-emptydir",
            recold=remount,
        )


def _fstype(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


# a memory limit like a pod's ------------------------------------------------------------------


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A child of this process's memory cgroup limited to `limit` bytes (cgroup v1 or v2), like
    an init container's `resources.limits.memory`; removed afterwards (its page cache charges
    move to the parent, as when a container ends)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    base: Path | None = None
    limit_file = ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, limit_file = (
                Path("/sys/fs/cgroup/memory") / path.lstrip("/"),
                "memory.limit_in_bytes",
            )
    if base is None:
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                base, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    if base is None:
        raise OSError("no memory cgroup")
    folder = base / f"readpath-bench-{os.getpid()}"
    folder.mkdir()
    try:
        (folder / limit_file).write_text(str(limit))
        yield folder
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)


PREFETCH_CHILD = """
import json, sys
from pathlib import Path
from webhook.cache.layout import Manifest
from webhook.cache.prefetch import prefetch_manifest_files
stats = prefetch_manifest_files(
    Path(sys.argv[1]),
    Manifest.from_json(Path(sys.argv[2]).read_text()),
    budget=-1 if sys.argv[3] == "budget" else None,
)
print(json.dumps(stats.__dict__))
"""


def prefetch_limited(root: Path, manifest: Manifest, *, limit: int, budget: bool) -> dict[str, Any]:
    """The init container's prefetch in a process under a memory limit (its own cgroup)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
        out.write(manifest.to_json())
    try:
        with memory_cgroup(limit) as cgroup:
            procs = cgroup / "cgroup.procs"
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PREFETCH_CHILD,
                    str(root),
                    out.name,
                    "budget" if budget else "none",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                preexec_fn=lambda: procs.write_text(str(os.getpid())),
            )
    finally:
        Path(out.name).unlink()
    stats: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return stats


# runs ----------------------------------------------------------------------------------------


def manifest_of(files: list[tuple[str, int]]) -> Manifest:
    return Manifest(
        uri="s3://bench/model",
        revision="",
        key="model-0000000000000000",
        files=tuple(FileEntry(path=p, size=s) for p, s in files),
        bytes=sum(s for _, s in files),
        created_at=0.0,
        download_seconds=0.0,
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def ceiling(target: Target, root: Path, files: list[tuple[str, int]]) -> dict[str, Any]:
    """`dd bs=16M` over the large files one after another, cold: the volume's sequential
    read throughput."""
    large = [(rel, size) for rel, size in files if size >= 64 * MiB]
    if not large:  # a small model (smoke runs): its largest files
        large = sorted(files, key=lambda f: -f[1])[:4]
    target.cold()
    began = time.perf_counter()
    for rel, _ in large:
        subprocess.run(
            ["dd", f"if={root / rel}", "of=/dev/null", "bs=16M"],
            check=True,
            capture_output=True,
        )
    seconds = time.perf_counter() - began
    total = sum(size for _, size in large)
    return {"seconds": round(seconds, 3), "bytes": total, "mb_s": round(total / seconds / 1e6, 1)}


def run_method(
    target: Target,
    root: Path,
    files: list[tuple[str, int]],
    name: str,
    *,
    limit: int = 0,
) -> dict[str, Any]:
    """One cold run of one method: seconds to model loaded (and its phases)."""
    total = sum(size for _, size in files)
    manifest = manifest_of(files)
    dest = target.emptydir
    shutil.rmtree(dest, ignore_errors=True)
    target.cold()
    phases: dict[str, float] = {}
    extra: dict[str, Any] = {}
    if name in READERS:
        phases["load"], got = timed(lambda: READERS[name](root, files))
    elif name.startswith("parallel-"):
        workers = int(name.removeprefix("parallel-"))
        phases["load"], got = timed(
            lambda: read_parallel(root, files, workers=workers, block=16 * MiB, part=64 * MiB)
        )
    elif name == "prefetch+seq-1m":
        phases["prefetch"], stats = timed(lambda: prefetch_manifest_files(root, manifest))
        extra["prefetched_bytes"] = stats.bytes
        phases["load"], got = timed(lambda: read_sequential(root, files, block=1 * MiB))
    elif name.startswith("prefetch-limit"):
        budget = name.startswith("prefetch-limit-budget")
        phases["prefetch"], stats = timed(
            lambda: prefetch_limited(root, manifest, limit=limit, budget=budget)
        )
        extra.update(
            memory_limit=limit,
            prefetched_bytes=stats["bytes"],
            skipped_bytes=stats["skipped_bytes"],
        )
        phases["load"], got = timed(lambda: read_sequential(root, files, block=1 * MiB))
    elif name == "copy-before":
        phases["copy"], _ = timed(lambda: copy_before(root, dest, files))
        phases["load"], got = timed(lambda: read_sequential(dest, files, block=1 * MiB))
    elif name.startswith("copy-"):
        workers = int(name.removeprefix("copy-"))
        phases["copy"], stats = timed(
            lambda: copy_manifest_files(root, dest, manifest, workers=workers)
        )
        extra["copy_method"] = stats.method
        phases["load"], got = timed(lambda: read_sequential(dest, files, block=1 * MiB))
    else:
        raise SystemExit(f"unknown method {name}")
    if got != total:
        sys.exit(f"{name}: read {got} bytes, the model has {total}")
    shutil.rmtree(dest, ignore_errors=True)
    seconds = sum(phases.values())
    return {
        "seconds": round(seconds, 3),
        **{f"{k}_s": round(v, 3) for k, v in phases.items()},
        **extra,
    }


def methods(args: argparse.Namespace) -> list[str]:
    out = ["seq-1m", "seq-16m"]
    out += [f"parallel-{n}" for n in args.parallel]
    out += ["mmap-safetensors", "prefetch+seq-1m"]
    if args.prefetch_limit:
        out += ["prefetch-limit+seq-1m", "prefetch-limit-budget+seq-1m"]
    out += ["copy-before"]
    out += [f"copy-{n}" for n in args.copy_workers]
    return out


def bench_target(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    root = target.volume / "models" / "bench"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"{target.name}: writing the model into {root}", file=sys.stderr)
    made = make_model(root, total_bytes=args.size, shards=args.shards)
    os.sync()
    files = model_files(root)
    assert sum(s for _, s in files) == made
    # Rounds: the ceiling, then every method once, `repeat` times. The machine is shared, so
    # each round sees the same load for the ceiling and the methods.
    names = methods(args)
    ceilings: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(args.repeat):
        ceilings.append(ceiling(target, root, files))
        print(
            f"  round {round_ + 1}: ceiling (dd bs=16M, cold) {ceilings[-1]['mb_s']:.0f} MB/s, "
            f"load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
        for name in names:
            run = run_method(target, root, files, name, limit=args.prefetch_limit)
            run["loadavg"] = round(os.getloadavg()[0], 2)
            runs[name].append(run)
            print(f"    {name}: {run['seconds']:.2f} s", file=sys.stderr)
    ceiling_mb_s = statistics.median(c["mb_s"] for c in ceilings)
    rows = []
    for name in names:
        median = statistics.median(r["seconds"] for r in runs[name])
        row: dict[str, Any] = {
            "method": name,
            "mode": "copy" if name.startswith("copy") else "mount",
            "median_s": median,
            "mb_s": round(made / median / 1e6, 1),
            "runs": runs[name],
        }
        if name.startswith("copy"):
            copy_s = statistics.median(r["copy_s"] for r in runs[name])
            row["copy_median_s"] = copy_s
            row["copy_mb_s"] = round(made / copy_s / 1e6, 1)
            row["copy_share_of_ceiling"] = round(made / copy_s / 1e6 / ceiling_mb_s, 3)
        rows.append(row)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "name": target.name,
        "description": target.description,
        "cold": target.cold_method,
        "model": {"bytes": made, "files": len(files), "large_files": args.shards},
        "ceiling": {"method": "dd bs=16M over the large files, cold", "runs": ceilings},
        "ceiling_mb_s": ceiling_mb_s,
        "methods": rows,
    }


# report --------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Read-path benchmark",
        "",
        f"Run {meta['date']} on {meta['cpus']} shared CPUs (Python {meta['python']}), commit "
        f"`{meta['commit']}`. Model: {meta['model_bytes'] / 1e9:.2f} GB in {meta['model_files']} "
        f"files ({meta['shards']} safetensors shards, the rest small files). Each figure is the "
        f"median of {meta['repeat']} cold runs (page cache dropped before each; GlusterFS "
        "clients remounted). Copy mode: the init container's copy into a local folder (the "
        "pod's emptyDir), then the server's read of the copy. Prefetch under a memory limit: "
        f"the prefetching process in a memory cgroup limited to {meta['prefetch_limit'] / MiB:.0f} "
        "MiB (an init container's `resources.limits.memory`), all of the model or within the "
        "budget it reads from its cgroup.",
        "",
        "Seconds to model loaded (share of the ceiling's throughput; for copy mode also the copy "
        "alone):",
        "",
        summary(results),
        "",
    ]
    for fs in results["filesystems"]:
        lines += [
            f"## {fs['name']}: {fs['description']}",
            "",
            f"Ceiling (the volume's sequential read, `dd bs=16M`, cold): "
            f"**{fs['ceiling_mb_s']:,.0f} MB/s** (rounds: "
            f"{', '.join(format(c['mb_s'], ',.0f') for c in fs['ceiling']['runs'])}). "
            f"Cold caches by: {fs['cold']}. "
            f"Load average (1 min) during the runs: {_load_range(fs)}.",
            "",
            "| method | to model loaded | throughput | phases (s) | share of ceiling |",
            "|---|---|---|---|---|",
        ]
        for row in fs["methods"]:
            run = row["runs"][0]
            phases = ", ".join(
                f"{k.removesuffix('_s')} {statistics.median(r[k] for r in row['runs']):.2f}"
                for k in run
                if k.endswith("_s") and k != "seconds"
            )
            share = row["mb_s"] / fs["ceiling_mb_s"]
            if "copy_share_of_ceiling" in row:
                share_text = f"{share:.0%} (the copy alone: {row['copy_share_of_ceiling']:.0%})"
            else:
                share_text = f"{share:.0%}"
            lines.append(
                f"| {label(row['method'])} | {row['median_s']:.2f} s | {row['mb_s']:,.0f} MB/s "
                f"| {phases} | {share_text} |"
            )
        lines.append("")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """One table, methods by filesystem: the one docs/performance.md shows."""
    filesystems = results["filesystems"]
    head = " | ".join(f"{fs['name']}" for fs in filesystems)
    lines = [
        f"| method | {head} |",
        "|---|" + "---|" * len(filesystems),
        "| ceiling: `dd bs=16M`, cold | "
        + " | ".join(f"{fs['ceiling_mb_s']:,.0f} MB/s" for fs in filesystems)
        + " |",
    ]
    by_name = [{row["method"]: row for row in fs["methods"]} for fs in filesystems]
    for name in by_name[0]:
        cells = []
        for fs, rows in zip(filesystems, by_name, strict=True):
            row = rows.get(name)
            if row is None:
                cells.append("-")
                continue
            share = row["mb_s"] / fs["ceiling_mb_s"]
            cell = f"{row['median_s']:.2f} s ({share:.0%})"
            if "copy_share_of_ceiling" in row:
                cell += f", copy {row['copy_median_s']:.2f} s ({row['copy_share_of_ceiling']:.0%})"
            cells.append(cell)
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_range(fs: dict[str, Any]) -> str:
    loads = [r["loadavg"] for row in fs["methods"] for r in row["runs"] if "loadavg" in r]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"


def write_results(results: dict[str, Any], out: Path) -> None:
    from charts import readpath

    out.mkdir(parents=True, exist_ok=True)
    (out / "readpath.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "readpath.md").write_text(render(results))
    readpath(results, out / "readpath.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fs", default="local,gluster", help="filesystems: local, gluster")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="model size")
    parser.add_argument("--shards", type=int, default=4, help="large safetensors files")
    parser.add_argument("--repeat", type=int, default=3, help="cold runs per method")
    parser.add_argument(
        "--parallel",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[4, 16],
        help="parallel reader counts (default 4,16)",
    )
    parser.add_argument(
        "--copy-workers",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 4, DEFAULT_WORKERS, 16],
        help=f"copy-mode worker counts (default 1,4,{DEFAULT_WORKERS},16)",
    )
    parser.add_argument(
        "--prefetch-limit",
        type=parse_size,
        default=None,
        help="memory limit of the prefetching process for the prefetch-limit runs (default: "
        "a quarter of --size; 0: no such runs)",
    )
    parser.add_argument(
        "--cold",
        choices=("drop", "fadvise"),
        default="drop",
        help="how caches are made cold: drop the machine's page cache (default, root), or "
        "posix_fadvise(DONTNEED) on the model's files only (leaves other jobs' caches alone)",
    )
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new one in /var/tmp)")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: a new temp folder; --out benchmarks/results replaces "
        "the committed results)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="readpath-results-"))
    if args.prefetch_limit is None:
        args.prefetch_limit = args.size // 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.fs.split(",") if n]
    work = args.work or Path(tempfile.mkdtemp(prefix="readpath-", dir="/var/tmp"))
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip(),
            "repeat": args.repeat,
            "shards": args.shards,
            "copy_defaults": {"workers": DEFAULT_WORKERS, "block_size": DEFAULT_BLOCK_SIZE},
            "prefetch_limit": args.prefetch_limit,
            "loadavg_start": os.getloadavg()[0],
        },
        "filesystems": [],
    }
    try:
        for name in names:
            maker = {"local": local_target, "gluster": gluster_target}.get(name)
            if maker is None:
                sys.exit(f"unknown filesystem {name!r}: local or gluster")
            with maker(work) as target:
                target.drop = args.cold == "drop"
                results["filesystems"].append(bench_target(target, args))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    fs0 = results["filesystems"][0]
    results["meta"].update(
        model_bytes=fs0["model"]["bytes"],
        model_files=fs0["model"]["files"],
        loadavg_end=os.getloadavg()[0],
    )
    write_results(results, args.out)
    print(render(results))
    print(f"results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
