"""Cold-start benchmark of `kserve-cache fetch` against the usual recipe, on a local moto S3.

Measures, per model size: a miss with `fetch` vs a plain `kserve-storage` download; a hit in
mount mode and in copy mode vs the recipe's `cp -r` out of the cache; and, for 8 pods starting
at once on an empty cache, the bytes pulled from the store by `fetch` vs by the recipe's logic
(check a marker file, else download, no lock). Writes coldstart.{md,json} into --out (default:
a new folder under the system temp dir; `--out benchmarks/results` refreshes the committed ones).

    .venv/bin/python benchmarks/coldstart/run.py --sizes 10M,100M,1G
    .venv/bin/python benchmarks/coldstart/run.py --sizes 10M,100M,1G --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from webhook.keys import cache_key  # noqa: E402

PY = REPO / ".venv" / "bin" / "python"
CLI = REPO / ".venv" / "bin" / "kserve-cache"
SERVERS = REPO / "tests" / "cache" / "servers.py"
RESULTS = REPO / "benchmarks" / "results"
BUCKET = "bench"
FILES_PER_MODEL = 4
PODS = 8

# The recipe's init-container logic: marker check, else download into the cache, no lock;
# then copy the model out of the cache into the pod's own folder.
RECIPE = """
import os, subprocess, sys
from kserve_storage import Storage
uri, cache, dest = sys.argv[1:4]
if not os.path.exists(os.path.join(cache, ".done")):
    Storage.download(uri, cache)
    open(os.path.join(cache, ".done"), "w").close()
subprocess.run(["cp", "-r", cache + "/.", dest], check=True)
"""

PLAIN = "import sys; from kserve_storage import Storage; Storage.download(sys.argv[1], sys.argv[2])"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


class Store:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(PY), str(SERVERS), "s3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self.env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 (moto accepts any key)
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106
        )

    def pulled(self) -> int:
        value: int = httpx.get(f"{self.endpoint}/_counts", timeout=30).json()["object_bytes"]
        return value

    def reset(self) -> None:
        httpx.delete(f"{self.endpoint}/_counts", timeout=30).raise_for_status()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def upload_model(store: Store, name: str, size: int, scratch: Path) -> str:
    client = store.client()
    try:
        part = size // FILES_PER_MODEL
        blob = scratch / "blob"
        with blob.open("wb") as out:
            left = part
            while left:
                chunk = min(left, 16 << 20)
                out.write(os.urandom(chunk))
                left -= chunk
        for i in range(FILES_PER_MODEL):
            client.upload_file(str(blob), BUCKET, f"{name}/model-{i:02d}.safetensors")
        client.put_object(Bucket=BUCKET, Key=f"{name}/config.json", Body=b'{"bench": true}')
        blob.unlink()
    finally:
        client.close()
    return f"s3://{BUCKET}/{name}"


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return took, done.stdout


def fetch_args(uri: str, root: Path, *extra: str) -> list[str]:
    return [str(CLI), "fetch", "--uri", uri, "--cache-root", str(root), "--key", cache_key(uri),
            "--termination-log", os.devnull, *extra]  # fmt: skip


def median_of(n: int, fn: Any) -> float:
    return statistics.median(fn() for _ in range(n))


def bench_size(
    store: Store, label: str, size: int, work: Path, *, concurrency: bool
) -> dict[str, Any]:
    print(f"== {label}: uploading", flush=True)
    uri = upload_model(store, label.lower(), size, work)
    row: dict[str, Any] = {"size": label, "bytes": size + 15}

    out = work / "plain"
    plain, _ = timed([str(PY), "-c", PLAIN, uri, str(out)], store.env)
    shutil.rmtree(out)
    row["plain_download_s"] = round(plain, 3)

    cache = work / "cache"
    cache.mkdir()
    miss, stdout = timed(fetch_args(uri, cache), store.env)
    assert json.loads(stdout)["outcome"] == "miss"
    row["fetch_miss_s"] = round(miss, 3)
    print(f"   plain {plain:.2f}s  fetch miss {miss:.2f}s", flush=True)

    def hit_mount() -> float:
        took, stdout = timed(fetch_args(uri, cache), store.env)
        line = json.loads(stdout)
        assert line["outcome"] == "hit"
        hit_inner.append(line["seconds"])
        return took

    hit_inner: list[float] = []
    row["fetch_hit_mount_s"] = round(median_of(3, hit_mount), 3)
    row["fetch_hit_mount_inner_s"] = round(statistics.median(hit_inner), 4)

    def hit_copy() -> float:
        dest = work / "copy-dest"
        took, stdout = timed(fetch_args(uri, cache, "--copy-to", str(dest)), store.env)
        assert json.loads(stdout)["outcome"] == "hit"
        shutil.rmtree(dest)
        return took

    row["fetch_hit_copy_s"] = round(median_of(3, hit_copy), 3)

    entry = cache / "models" / cache_key(uri)

    def recipe_cp() -> float:
        dest = work / "cp-dest"
        dest.mkdir()
        took, _ = timed(["cp", "-r", f"{entry}/.", str(dest)], store.env)
        shutil.rmtree(dest)
        return took

    row["recipe_hit_cp_s"] = round(median_of(3, recipe_cp), 3)
    print(
        f"   hit mount {row['fetch_hit_mount_s']}s copy {row['fetch_hit_copy_s']}s "
        f"recipe cp -r {row['recipe_hit_cp_s']}s",
        flush=True,
    )
    shutil.rmtree(cache)

    if concurrency:
        row.update(bench_concurrency(store, uri, work))
    return row


def bench_concurrency(store: Store, uri: str, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, make in (("fetch", _fetch_pod), ("recipe", _recipe_pod)):
        cache = work / f"{name}-cache"
        cache.mkdir()
        store.reset()
        began = time.perf_counter()
        procs = [make(uri, cache, work / f"{name}-pod-{i}", store.env) for i in range(PODS)]
        codes = [p.wait() for p in procs]
        took = time.perf_counter() - began
        if name == "fetch" and any(codes):
            raise RuntimeError(f"{name}: exit codes {codes}")
        # The recipe's pods race on the same folder; some fail (a finding, not a bench bug).
        result[f"{name}_8pods_failed"] = sum(1 for c in codes if c)
        result[f"{name}_8pods_pulled_bytes"] = store.pulled()
        result[f"{name}_8pods_s"] = round(took, 3)
        print(f"   8 pods {name}: pulled {store.pulled():,} bytes in {took:.1f}s", flush=True)
        shutil.rmtree(cache)
        for i in range(PODS):
            shutil.rmtree(work / f"{name}-pod-{i}", ignore_errors=True)
    return result


def _fetch_pod(uri: str, cache: Path, dest: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Mount mode: the serving container reads the entry in place, nothing to copy.
    del dest
    return subprocess.Popen(fetch_args(uri, cache), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def _recipe_pod(uri: str, cache: Path, dest: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    dest.mkdir()
    args = [str(PY), "-c", RECIPE, uri, str(cache / "model"), str(dest)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "coldstart.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Cold start: `kserve-cache fetch` vs the usual recipe",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs shared with other "
        "jobs), local moto S3 server on 127.0.0.1, cache and pod folders on the local disk "
        "(page cache warm). Wall times of whole processes (interpreter start included), "
        "hits are the median of 3. Produced by `benchmarks/coldstart/run.py`; raw figures in "
        "`coldstart.json`.",
        "",
        "| model | plain kserve-storage download | fetch miss | fetch hit, mount mode "
        "(inside fetch) | fetch hit, copy mode | recipe hit (`cp -r`) | 8 pods on a miss: "
        "pulled by fetch | pulled by recipe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f8 = r.get("fetch_8pods_pulled_bytes")
        r8 = r.get("recipe_8pods_pulled_bytes")
        lines.append(
            f"| {r['size']} | {r['plain_download_s']:.2f} s | {r['fetch_miss_s']:.2f} s | "
            f"{r['fetch_hit_mount_s']:.2f} s ({r['fetch_hit_mount_inner_s'] * 1000:.1f} ms) | "
            f"{r['fetch_hit_copy_s']:.2f} s | {r['recipe_hit_cp_s']:.2f} s | "
            + (f"{f8 / 1e6:,.0f} MB ({r['fetch_8pods_s']:.1f} s) | " if f8 is not None else "- | ")
            + (
                f"{r8 / 1e6:,.0f} MB ({r['recipe_8pods_s']:.1f} s, "
                f"{r['recipe_8pods_failed']} of 8 pods failed) |"
                if r8 is not None
                else "- |"
            )
        )
    lines += ["", *meta.get("notes", [])]
    (out / "coldstart.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10M,100M,1G", help="model sizes (default 10M,100M,1G)")
    parser.add_argument("--no-concurrency", default="", help="sizes to run without the 8-pod part")
    parser.add_argument("--work", type=Path, help="scratch folder (default a temp folder)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where coldstart.md and coldstart.json go (default: a new temp folder; "
        "--out benchmarks/results replaces the committed results)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="coldstart-results-"))
    return args


def main() -> None:
    args = parse_args()
    skip8 = {s.strip().upper() for s in args.no_concurrency.split(",") if s.strip()}
    work_root = args.work or Path(tempfile.mkdtemp(prefix="coldstart-"))
    store = Store()
    rows = []
    try:
        client = store.client()
        client.create_bucket(Bucket=BUCKET)
        client.close()
        for label in args.sizes.split(","):
            label = label.strip().upper()
            work = work_root / label
            work.mkdir(parents=True)
            try:
                rows.append(
                    bench_size(
                        store, label, parse_size(label), work, concurrency=label not in skip8
                    )
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        store.close()
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "files_per_model": FILES_PER_MODEL + 1,
    }
    write_results(rows, meta, args.out)
    print((args.out / "coldstart.md").read_text())
    print(f"results written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
