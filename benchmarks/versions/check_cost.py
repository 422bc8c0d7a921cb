"""Cost of one `refresh=on-start` source check per scheme, against the local stand-ins.

Runs `source_fingerprint` against moto S3 (a 3-object prefix), the HTTP stub (HEAD with ETag),
the hub stub (revision endpoint) and a local folder, N times each, and prints the calls one
check makes and its median and 95th-percentile time. Usage:

    .venv/bin/python benchmarks/versions/check_cost.py [-n 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--processes", type=int, default=7, help="fetch processes per policy")
    args = parser.parse_args()

    import boto3

    from tests.versions.stubs import StubServer
    from webhook.cache.fingerprint import Fingerprint, source_fingerprint

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests/cache/servers.py"), "s3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    stub = StubServer()
    stub.start()
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        s3.create_bucket(Bucket="models")
        for name in ("config.json", "weights/part-0.bin", "weights/part-1.bin"):
            s3.put_object(Bucket="models", Key=f"llama/{name}", Body=os.urandom(1000))
        stub.put("/model.bin", os.urandom(1000), modified=1_700_000_000)
        stub.hub[("org/model", "main")] = "a" * 40
        local = Path(tempfile.mkdtemp())
        for i in range(3):
            (local / f"f{i}.bin").write_bytes(b"x" * 1000)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HF_ENDPOINT": stub.url(),
        }
        cases = [
            ("s3 (3 objects)", "s3://models/llama"),
            ("http (HEAD)", stub.url("/model.bin")),
            ("hf (revision)", "hf://org/model"),
            ("file (3 files)", f"file://{local}"),
        ]
        print(f"{'scheme':16} {'calls':>5} {'median ms':>10} {'p95 ms':>8}  (n={args.n})")
        for name, uri in cases:
            times = []
            calls = 0
            for _ in range(args.n):
                began = time.perf_counter()
                result = source_fingerprint(uri, env=env)
                times.append(time.perf_counter() - began)
                assert isinstance(result, Fingerprint), result
                calls = result.calls
            times.sort()
            p95 = times[int(0.95 * (len(times) - 1))]
            med = statistics.median(times)
            print(f"{name:16} {calls:>5} {med * 1000:>10.1f} {p95 * 1000:>8.1f}")
        print()
        print("a whole `kserve-cache fetch` hit (process start to exit), median seconds:")
        print(f"{'scheme':16} {'never':>7} {'on-start':>9} {'added':>7}  (n={args.processes})")
        # hf is left out: the stub answers the revision endpoint only, not the file
        # downloads a miss needs (its check is the same one GET as above).
        for name, uri in cases[:2]:
            never = _fetch_seconds(uri, env, "never", args.processes)
            on_start = _fetch_seconds(uri, env, "on-start", args.processes)
            print(f"{name:16} {never:>7.3f} {on_start:>9.3f} {on_start - never:>7.3f}")
    finally:
        stub.stop()
        proc.kill()
        proc.wait()


def _fetch_seconds(uri: str, env: dict[str, str], refresh: str, n: int) -> float:
    """Median wall time of `n` fetch processes hitting a published entry."""
    from webhook.keys import cache_key

    root = Path(tempfile.mkdtemp()) / "cache"
    root.mkdir()
    cli = REPO / ".venv" / "bin" / "kserve-cache"
    args = [str(cli), "fetch", f"--uri={uri}", f"--cache-root={root}", f"--key={cache_key(uri)}",
            f"--refresh={refresh}", f"--termination-log={root.parent / 'tl'}"]  # fmt: skip
    full_env = {**os.environ, **env}
    subprocess.run(args, env=full_env, check=True, capture_output=True)  # the miss
    times = []
    for _ in range(n):
        began = time.perf_counter()
        subprocess.run(args, env=full_env, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


if __name__ == "__main__":
    main()
