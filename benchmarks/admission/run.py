"""Admission load benchmark: `kserve-cache serve` over real TLS on 127.0.0.1, driven with the
golden AdmissionReviews padded to 5-15 KB, against a no-op floor endpoint on the same server.

    .venv/bin/python benchmarks/admission/run.py            # full run, 10-15 minutes
    .venv/bin/python benchmarks/admission/run.py --quick    # smoke run, ~40 seconds

Saturation with `wrk` (Lua script rotating the reviews), fixed rates with `hey -q` (one process
per review, together at the target rate), CPU time per request of the server and of the load
generator, RSS of the server process over 100,000 admissions, and the in-process cost of
`review()` (pytest-benchmark). Writes benchmarks/results/admission.{json,md}. Needs Debian's
`wrk` and `hey`: installed with apt-get when missing and running as root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from workload import Item, load_items, outcome_mix  # noqa: E402

CLI = REPO / ".venv" / "bin" / "kserve-cache"
PYTEST = REPO / ".venv" / "bin" / "pytest"
RESULTS = REPO / "benchmarks" / "results"
LUA = HERE / "request.lua"
PACED_CONNECTIONS = 40
"""Connections of a paced run: each waits ~80 ms between requests at 500/s, so one
millisecond of delay moves the rate by ~1 %."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_SATURATION = 1500.0
TARGET_P99_MS = 5.0
TARGET_P99_RATE = 500
TARGET_FLOOR_RATIO = 0.70
TARGET_PARSE_FLOOR_RATIO = 0.50
RATIO_REVIEW = "03-kserve-after-s3-credentials"
"""The review of the parse-floor ratio: a KServe pod with S3 credentials, mutated."""
FLOOR_APP = HERE / "floor_app.py"
DISTINCT_PODS = 1000
"""Variants of the ratio review (another generateName each): more than the webhook's memo
holds, so each one is reviewed in full."""
PY = REPO / ".venv" / "bin" / "python"


# machine -------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"missing {missing}: install Debian's packages: sudo apt-get install -y wrk hey")
    print(f"installing {missing} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env).returncode:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    ca_file: Path

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(verify=context, timeout=10)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def workers(self) -> list[int]:
        """The processes that answer requests: the children when there are any."""
        pids = self.pids()
        return pids[1:] or pids


def start_server(work: Path, extra: list[str]) -> Server:
    port = free_port()
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            str(CLI),
            "serve",
            "--self-signed",
            "--cert-dir",
            str(work / "certs"),
            "--port",
            str(port),
            "--no-cluster",
            "--floor-endpoint",
            *extra,
        ],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    server = Server(process, port, work / "certs" / "ca.crt")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"serve exited: {(work / 'serve.log').read_text()}")
        if server.ca_file.exists():
            try:
                with server.client() as client:
                    if client.get(server.url("/readyz")).status_code == 200:
                        return server
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    process.kill()
    sys.exit("serve did not come up")


def start_parse_floor(work: Path, cert_dir: Path) -> Server:
    """The raw-ASGI parse floor (floor_app.py: read, orjson-parse, allow) on the same TLS
    certificate and uvicorn settings, one process."""
    port = free_port()
    log = (work / "floor.log").open("wb")
    process = subprocess.Popen(
        [str(PY), str(FLOOR_APP), "--port", str(port), "--cert-dir", str(cert_dir)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    server = Server(process, port, cert_dir / "ca.crt")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"floor_app exited: {(work / 'floor.log').read_text()}")
        try:
            with server.client() as client:
                if client.get(server.url("/")).status_code == 200:
                    return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit("floor_app did not come up")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def verify_answers(server: Server, items: list[Item]) -> int:
    """Each review answered over HTTP exactly as the in-process core answers it."""
    from webhook.clusterconfig import ClusterConfig
    from webhook.review import review_body

    config = ClusterConfig()
    with server.client() as client:
        for item in items:
            got = client.post(
                server.url("/mutate"),
                content=item.body,
                headers={"content-type": "application/json"},
            )
            want = review_body(item.review, config=config).response
            if got.status_code != 200 or got.json() != json.loads(json.dumps(want)):
                sys.exit(f"{item.name}: the server's answer differs from review():\n{got.text}")
            floor = client.post(
                server.url("/floor"),
                content=item.body,
                headers={"content-type": "application/json"},
            )
            if floor.status_code != 200 or floor.json()["response"]["allowed"] is not True:
                sys.exit(f"/floor: unexpected answer {floor.status_code} {floor.text}")
    return len(items)


# load generators -----------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    endpoint: str
    target_rate: float | None
    seconds: float
    requests: int
    errors: int
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_request: float
    server_cpu_percent: float
    generator_cpu_percent: float
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)


def run_wrk(
    server: Server,
    endpoint: str,
    list_file: Path,
    *,
    seconds: float,
    threads: int,
    conns: int,
    delay_ms: int | None = None,
) -> Run:
    """`wrk` as fast as it goes, or with `delay_ms` each connection waits that long after
    each answer (request.lua's fixed rate: about conns * 1000 / (delay_ms + latency) a second)."""
    before_load = loadavg()
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    started = time.monotonic()
    process = subprocess.Popen(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA),
            server.url(f"/{endpoint}"),
            "--",
            str(list_file),
            *([] if delay_ms is None else [str(delay_ms)]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = process.stdout.read().decode()
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    cpu1 = cpu_seconds(pids)
    line = next((x for x in output.splitlines() if x.startswith("WRKJSON ")), None)
    if process.returncode or line is None:
        sys.exit(f"wrk failed:\n{output}")
    data = json.loads(line.removeprefix("WRKJSON "))
    duration = data["duration_us"] / 1e6
    errors = sum(data[k] for k in data if k.startswith("errors_"))
    return Run(
        tool=f"wrk -t{threads} -c{conns}" + ("" if delay_ms is None else f" paced {delay_ms} ms"),
        endpoint=endpoint,
        target_rate=None,
        seconds=round(duration, 2),
        requests=data["requests"],
        errors=errors,
        rate=round(data["requests"] / duration, 1),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        server_cpu_us_per_request=round((cpu1 - cpu0) / max(1, data["requests"]) * 1e6, 1),
        server_cpu_percent=round(100 * (cpu1 - cpu0) / wall, 1),
        generator_cpu_percent=round(100 * (usage.ru_utime + usage.ru_stime) / wall, 1),
        loadavg_before=before_load,
        loadavg_after=loadavg(),
    )


def run_paced(
    server: Server, endpoint: str, list_file: Path, *, rate: float, seconds: float, repeat: int
) -> list[Run]:
    """`repeat` runs of `wrk` at about `rate` requests a second. A 2-second run with the wait
    the rate would need if answers took no time measures what a cycle adds (the latency, timer
    slack); the measured runs wait that much less."""
    conns = PACED_CONNECTIONS
    ideal = conns * 1000 / rate
    probe = run_wrk(
        server, endpoint, list_file, seconds=2, threads=1, conns=conns, delay_ms=round(ideal)
    )
    overhead = conns * 1000 / max(probe.rate, 1.0) - round(ideal)
    delay = max(1, round(ideal - overhead))
    runs = []
    for _ in range(repeat):
        run = run_wrk(
            server, endpoint, list_file, seconds=seconds, threads=1, conns=conns, delay_ms=delay
        )
        run.target_rate = rate
        runs.append(run)
    return runs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def run_hey(
    server: Server, endpoint: str, bodies: list[Path], *, rate: float, seconds: float
) -> Run:
    """`hey -q` processes, one per body, together sending `rate` requests a second."""
    before_load = loadavg()
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    workers_each = 4  # a slow answer does not hold back the next tick of the same process
    per_worker = rate / len(bodies) / workers_each
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [
                "hey",
                "-z",
                f"{seconds}s",
                "-c",
                str(workers_each),
                "-q",
                f"{per_worker:.3f}",
                "-m",
                "POST",
                "-T",
                "application/json",
                "-D",
                str(body),
                "-t",
                "5",
                "-o",
                "csv",
                server.url(f"/{endpoint}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for body in bodies
    ]
    latencies: list[float] = []
    errors = 0
    generator_cpu = 0.0
    for process in processes:
        assert process.stdout is not None
        output = process.stdout.read().decode()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        generator_cpu += usage.ru_utime + usage.ru_stime
        lines = output.splitlines()
        if process.returncode or not lines or not lines[0].startswith("response-time"):
            sys.exit(f"hey failed:\n{output[:2000]}")
        for row in lines[1:]:
            cols = row.split(",")
            if len(cols) < 7:
                continue
            latencies.append(float(cols[0]) * 1000)
            if cols[6] != "200":
                errors += 1
    wall = time.monotonic() - started
    cpu1 = cpu_seconds(pids)
    return Run(
        tool=f"hey -q x{len(bodies)} processes x{workers_each} workers",
        endpoint=endpoint,
        target_rate=rate,
        seconds=seconds,
        requests=len(latencies),
        errors=errors,
        rate=round(len(latencies) / seconds, 1),
        p50_ms=round(percentile(latencies, 50), 3),
        p90_ms=round(percentile(latencies, 90), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        max_ms=round(max(latencies, default=float("nan")), 3),
        server_cpu_us_per_request=round((cpu1 - cpu0) / max(1, len(latencies)) * 1e6, 1),
        server_cpu_percent=round(100 * (cpu1 - cpu0) / wall, 1),
        generator_cpu_percent=round(100 * generator_cpu / wall, 1),
        loadavg_before=before_load,
        loadavg_after=loadavg(),
    )


# in-process ----------------------------------------------------------------------------------


def in_process(work: Path) -> list[dict[str, Any]]:
    out = work / "bench.json"
    result = subprocess.run(
        [
            str(PYTEST),
            str(HERE / "bench_review.py"),
            "--benchmark-enable",
            "--benchmark-only",
            f"--benchmark-json={out}",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(f"pytest-benchmark failed:\n{result.stdout}\n{result.stderr}")
    data = json.loads(out.read_text())
    return [
        {
            "name": bench["name"],
            "median_us": round(bench["stats"]["median"] * 1e6, 1),
            "mean_us": round(bench["stats"]["mean"] * 1e6, 1),
            "min_us": round(bench["stats"]["min"] * 1e6, 1),
            "rounds": bench["stats"]["rounds"],
        }
        for bench in data["benchmarks"]
    ]


# report --------------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def render(results: dict[str, Any]) -> str:
    def row(run: dict[str, Any]) -> str:
        target = f"{run['target_rate']:.0f}/s" if run["target_rate"] else "saturation"
        return (
            f"| {run['endpoint']} | {target} | {run['rate']:,.0f}/s | {run['p50_ms']:.2f} | "
            f"{run['p90_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | "
            f"{run['server_cpu_us_per_request']:.0f} | {run['server_cpu_percent']:.0f} % | "
            f"{run['generator_cpu_percent']:.0f} % | {run['loadavg_before'][0]:.1f} |"
        )

    mark = {True: "met", False: "**not met**"}
    configs = results["configs"]
    workload = results["workload"]
    hey = ", ".join(f"{b['name']} ({b['bytes']:,} B)" for b in workload["hey_bodies"])
    lines = [
        "# Admission benchmark",
        "",
        f"Run {results['when']} on {results['machine']['cpus']} CPUs "
        f"(Python {results['machine']['python']}), `kserve-cache serve --self-signed "
        f"--no-cluster --floor-endpoint --workers N` (real TLS, 127.0.0.1), commit "
        f"`{results['commit']}`. Load average (1 min) at the start: "
        f"{results['loadavg_start'][0]:.2f}, at the end: {results['loadavg_end'][0]:.2f}; the "
        "machine is shared with other jobs and the load generator runs on the same two cores, "
        "so figures move from run to run (the load before each run is in the tables).",
        "",
        f"Workload: {len(workload['items'])} golden AdmissionReviews padded to "
        f"{workload['min_bytes']:,}-{workload['max_bytes']:,} bytes; outcomes "
        f"{workload['mix']}. Saturation: `wrk` rotating all of them. Fixed rates: `hey -q`, "
        f"one process per body: {hey}.",
        "",
        "## Targets",
        "",
        "| target | " + " | ".join(f"--workers {c['workers']}" for c in configs) + " |",
        "|---|" + "---|" * len(configs),
        f"| >= {TARGET_SATURATION:,.0f} admissions/s at saturation | "
        + " | ".join(
            f"{c['targets']['saturation_rate']:,.0f}/s {mark[c['targets']['saturation_ok']]}"
            for c in configs
        )
        + " |",
        f"| p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_P99_RATE}/s (`hey`, the mix of two) | "
        + " | ".join(
            f"{c['targets']['p99_ms']:.2f} ms {mark[c['targets']['p99_ok']]}" for c in configs
        )
        + " |",
        *(
            f"| the same, `wrk` paced (median of the runs), {label} | "
            + " | ".join(_ms_mark(c["targets"].get(f"paced_p99_ms:{name}"), mark) for c in configs)
            + " |"
            for name, label in (
                ("mutate:credentials", f"{RATIO_REVIEW} (memo)"),
                ("mutate:credentials-distinct", f"{RATIO_REVIEW} as distinct pods (full review)"),
            )
        ),
        f"| >= {TARGET_FLOOR_RATIO:.0%} of the floor's throughput | "
        + " | ".join(
            f"{c['targets']['floor_ratio']:.0%} {mark[c['targets']['floor_ok']]}" for c in configs
        )
        + " |",
        f"| >= {TARGET_PARSE_FLOOR_RATIO:.0%} of the raw-ASGI parse floor ({RATIO_REVIEW}) | "
        + " | ".join(
            f"{c['targets']['parse_floor_ratio']:.0%} {mark[c['targets']['parse_floor_ok']]}"
            if "parse_floor_ratio" in c["targets"]
            else "-"
            for c in configs
        )
        + " |",
        "| the same, as distinct pods (no memo hit) | "
        + " | ".join(_percent((c.get("parse_floor") or {}).get("distinct_ratio")) for c in configs)
        + " |",
    ]
    for config in configs:
        parse = config.get("parse_floor")
        if not parse:
            continue
        runs = parse["runs"]
        lines += [
            "",
            f"## Parse floor (--workers {config['workers']})",
            "",
            "The floor: `floor_app.py`, a raw ASGI app under the same uvicorn settings and "
            "certificate (TLS, httptools, uvloop, one process) that reads the body, parses it "
            "with orjson and allows the review with its uid. /mutate and the floor alternate "
            f"with `wrk`, {len(parse['ratios'])} pairs; the ratio is the median of the pairs' "
            f"ratios ({', '.join(f'{r:.2f}' for r in parse['ratios'])}). Review: "
            f"{parse['review']} (mutated), the same pod each time (a ReplicaSet scaling up: "
            "answered from the webhook's memo after the first). The same review as "
            f"{DISTINCT_PODS} distinct pods (another generateName each: every one reviewed in "
            f"full): {_percent(parse.get('distinct_ratio'))}. /mutate over the whole mix against "
            f"the floor over the same mix: {parse['mix_ratio']:.0%}.",
            "",
            "| run | throughput | p50 | p99 | server CPU us/req | load |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['endpoint']} | {r['rate']:,.0f}/s | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['server_cpu_us_per_request']:.0f} | {r['loadavg_before'][0]:.1f} |"
                for name in runs
                for r in runs[name]
            ),
        ]
    for config in configs:
        if not config.get("paced"):
            continue
        lines += [
            "",
            f"## Fixed rates with `wrk` (--workers {config['workers']})",
            "",
            f"`request.lua` with a delay (its second argument): {PACED_CONNECTIONS} connections, "
            "each waiting after every answer for a time drawn from 0.5 to 1.5 times the mean "
            "(calibrated by a 2-second run so that the rate is reached); the target takes the "
            "median p99 of the runs at "
            f"{TARGET_P99_RATE}/s. `wrk` is one C thread: unlike `hey` it can send the "
            "distinct pods, and it costs the two cores little. Latencies in ms, from send to "
            "answer.",
            "",
            "| run | rate | throughput | p50 | p90 | p99 | errors | server CPU us/req | "
            "server CPU | generator CPU | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(row(run) for run in config["paced"]),
        ]
    for config in configs:
        memory = config["memory"]
        lines += [
            "",
            f"## --workers {config['workers']}",
            "",
            "Saturation: median of the repeats (by throughput). Latencies in ms. CPU: server CPU "
            "time per request, server and load-generator CPU use over the run (100 % = one "
            "core). Load: 1-minute load average before the run.",
            "",
            "| endpoint | rate | throughput | p50 | p90 | p99 | errors | server CPU us/req | "
            "server CPU | generator CPU | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(row(run) for run in config["summary"]),
            "",
            "All saturation repeats, /mutate vs /floor: "
            + ", ".join(
                f"{m['rate']:,.0f} vs {f['rate']:,.0f}"
                for m, f in zip(
                    config["saturation"]["mutate"], config["saturation"]["floor"], strict=True
                )
            )
            + ".",
            "",
            f"Memory: RSS (MiB) of each of the {memory['workers']} worker process(es) over "
            f"{memory['admissions']:,} admissions in all (each worker answers about its share):",
            "",
            "| admissions (all workers) | RSS per worker (MiB) |",
            "|---|---|",
            *(
                f"| {s['admissions']:,} | {', '.join(str(r) for r in s['rss_mib'])} |"
                for s in memory["samples"]
            ),
        ]
    lines += [
        "",
        "## In-process cost (pytest-benchmark)",
        "",
        "| benchmark | median us | mean us | min us | rounds |",
        "|---|---|---|---|---|",
        *(
            f"| {b['name']} | {b['median_us']} | {b['mean_us']} | {b['min_us']} | {b['rounds']} |"
            for b in results["in_process"]
        ),
    ]
    return "\n".join(lines) + "\n"


def _ms_mark(value: float | None, mark: dict[bool, str]) -> str:
    return "-" if value is None else f"{value:.2f} ms {mark[value <= TARGET_P99_MS]}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def bench_config(
    work: Path,
    items: list[Item],
    list_file: Path,
    hey_bodies: list[Path],
    *,
    workers: int,
    args: argparse.Namespace,
    ratio_list: Path | None = None,
    distinct_list: Path | None = None,
) -> dict[str, Any]:
    """Every load run against one server configuration (`serve --workers N`); with
    `ratio_list` (one worker) also the parse-floor ratio, /mutate and the raw-ASGI floor
    alternating in the same run."""
    serve_args = ["--workers", str(workers), *args.serve_arg]
    server = start_server(work, serve_args)
    parse_floor: dict[str, list[Run]] = {}
    floor_server = start_parse_floor(work, work / "certs") if ratio_list else None
    try:
        pids = server.workers()

        def sample(total: int) -> dict[str, Any]:
            return {"admissions": total, "rss_mib": [round(rss_kib(p) / 1024, 1) for p in pids]}

        samples = [sample(0)]
        admissions = verify_answers(server, items)
        print(f"workers={workers}: answers verified; warming up", file=sys.stderr)
        for endpoint in ("mutate", "floor"):
            warm = run_wrk(server, endpoint, list_file, seconds=2, threads=1, conns=8)
            admissions += warm.requests if endpoint == "mutate" else 0

        saturation: dict[str, list[Run]] = {"mutate": [], "floor": []}
        for _ in range(args.repeat):
            for endpoint in ("mutate", "floor"):
                run = run_wrk(
                    server,
                    endpoint,
                    list_file,
                    seconds=args.seconds,
                    threads=args.threads,
                    conns=args.connections,
                )
                print(f"  saturation {endpoint}: {run.rate}/s p99 {run.p99_ms} ms", file=sys.stderr)
                saturation[endpoint].append(run)
                admissions += run.requests if endpoint == "mutate" else 0
                samples.append(sample(admissions))
        if floor_server is not None and ratio_list is not None:
            for _ in range(args.repeat):
                for name, target, path, reviews in (
                    ("mutate:credentials", server, "mutate", ratio_list),
                    ("parse-floor:credentials", floor_server, "admit", ratio_list),
                    ("mutate:credentials-distinct", server, "mutate", distinct_list),
                    ("parse-floor:mix", floor_server, "admit", list_file),
                ):
                    if reviews is None:
                        continue
                    run = run_wrk(
                        target,
                        path,
                        reviews,
                        seconds=args.seconds,
                        threads=args.threads,
                        conns=args.connections,
                    )
                    run.endpoint = name
                    print(f"  {name}: {run.rate}/s p99 {run.p99_ms} ms", file=sys.stderr)
                    parse_floor.setdefault(name, []).append(run)
                    admissions += run.requests if name.startswith("mutate") else 0
                    samples.append(sample(admissions))
        paced: list[Run] = []
        if floor_server is not None and ratio_list is not None:
            # fixed rates with wrk (C, one thread): the repeated and the distinct pod, and the
            # raw-ASGI floor on the same review, each measured from send to answer
            for rate in [float(r) for r in args.rates.split(",") if r]:
                for name, target, path, reviews in (
                    ("mutate:credentials", server, "mutate", ratio_list),
                    ("mutate:credentials-distinct", server, "mutate", distinct_list),
                    ("parse-floor:credentials", floor_server, "admit", ratio_list),
                ):
                    if reviews is None:
                        continue
                    for run in run_paced(
                        target, path, reviews, rate=rate, seconds=args.seconds, repeat=args.repeat
                    ):
                        run.endpoint = name
                        print(f"  {rate:.0f}/s paced {name}: p99 {run.p99_ms} ms", file=sys.stderr)
                        paced.append(run)
                        admissions += run.requests if name.startswith("mutate") else 0
                        samples.append(sample(admissions))
        fixed: list[Run] = []
        for rate in [float(r) for r in args.rates.split(",") if r]:
            for endpoint in ("mutate", "floor"):
                run = run_hey(server, endpoint, hey_bodies, rate=rate, seconds=args.seconds)
                print(f"  {rate:.0f}/s {endpoint}: p99 {run.p99_ms} ms", file=sys.stderr)
                fixed.append(run)
                admissions += run.requests if endpoint == "mutate" else 0
        samples.append(sample(admissions))
        # each worker answers about 1/N of the admissions: drive N x the count
        while admissions < args.memory_admissions * len(pids):
            run = run_wrk(
                server,
                "mutate",
                list_file,
                seconds=10,
                threads=args.threads,
                conns=args.connections,
            )
            admissions += run.requests
            samples.append(sample(admissions))
            print(f"  memory: {samples[-1]}", file=sys.stderr)
    finally:
        stop_server(server)
        if floor_server is not None:
            stop_server(floor_server)

    mutate_sat = median_run(saturation["mutate"])
    floor_sat = median_run(saturation["floor"])
    at_target = next(
        (r for r in fixed if r.endpoint == "mutate" and r.target_rate == TARGET_P99_RATE), None
    )
    ratio = mutate_sat.rate / floor_sat.rate
    p99 = at_target.p99_ms if at_target else float("nan")
    paced_at: dict[str, list[float]] = {}
    for r in paced:
        if r.target_rate == TARGET_P99_RATE:
            paced_at.setdefault(r.endpoint, []).append(r.p99_ms)
    parse: dict[str, Any] = {}
    if parse_floor:
        # the ratio of each pair run back to back, then the median (the machine's load moves)
        pairs = [
            m.rate / f.rate
            for m, f in zip(
                parse_floor["mutate:credentials"],
                parse_floor["parse-floor:credentials"],
                strict=True,
            )
        ]
        distinct_pairs = [
            m.rate / f.rate
            for m, f in zip(
                parse_floor.get("mutate:credentials-distinct", []),
                parse_floor["parse-floor:credentials"],
                strict=False,
            )
        ]
        mix_pairs = [
            m.rate / f.rate
            for m, f in zip(saturation["mutate"], parse_floor["parse-floor:mix"], strict=True)
        ]
        parse = {
            "review": RATIO_REVIEW,
            "ratio": round(statistics.median(pairs), 3),
            "ratios": [round(r, 3) for r in pairs],
            "mix_ratio": round(statistics.median(mix_pairs), 3),
            "distinct_ratio": round(statistics.median(distinct_pairs), 3)
            if distinct_pairs
            else None,
            "ok": statistics.median(pairs) >= TARGET_PARSE_FLOOR_RATIO,
            "runs": {k: [asdict(r) for r in v] for k, v in parse_floor.items()},
        }
    return {
        "workers": workers,
        "server_args": ["--self-signed", "--no-cluster", "--floor-endpoint", *serve_args],
        "targets": {
            "saturation_rate": mutate_sat.rate,
            "saturation_ok": mutate_sat.rate >= TARGET_SATURATION,
            "p99_ms": p99,
            "p99_ok": p99 <= TARGET_P99_MS,
            **{
                f"paced_p99_ms:{name}": statistics.median(p99s)
                for name, p99s in paced_at.items()
                if name.startswith("mutate")
            },
            "floor_ratio": round(ratio, 3),
            "floor_ok": ratio >= TARGET_FLOOR_RATIO,
            **(
                {"parse_floor_ratio": parse["ratio"], "parse_floor_ok": parse["ok"]}
                if parse
                else {}
            ),
        },
        "parse_floor": parse,
        "summary": [asdict(mutate_sat), asdict(floor_sat), *[asdict(r) for r in fixed]],
        "paced": [asdict(r) for r in paced],
        "saturation": {k: [asdict(r) for r in v] for k, v in saturation.items()},
        "memory": {"admissions": admissions, "workers": len(pids), "samples": samples},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each load run")
    parser.add_argument("--repeat", type=int, default=3, help="saturation runs per endpoint")
    parser.add_argument("--rates", default="100,500", help="fixed rates for hey (per second)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--memory-admissions", type=int, default=100_000)
    parser.add_argument(
        "--workers",
        default=f"1,{os.cpu_count() or 1}",
        help="serve --workers values to measure, comma-separated (default: 1 and one per CPU)",
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--name", default="admission", help="results file name (no suffix)")
    parser.add_argument("--quick", action="store_true", help="short smoke run (no memory run)")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: a new temp folder; --out benchmarks/results replaces the "
        "committed results)",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="admission-results-"))
    if args.quick:
        args.seconds, args.repeat, args.memory_admissions = 3, 1, 0
    worker_counts = sorted({int(w) for w in args.workers.split(",") if w})

    ensure_tools()
    items = load_items()
    loadavg_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="admission-bench-") as tmp:
        work = Path(tmp)
        paths = []
        for index, item in enumerate(items):
            path = work / f"review-{index:02d}.json"
            path.write_bytes(item.body)
            paths.append(path)
        list_file = work / "reviews.txt"
        list_file.write_text("".join(f"{p}\n" for p in paths))
        # hey sends one body per process, and every process is a Go runtime competing for the
        # same two cores: two processes, a mutated review and a skipped one of median size
        mutated = [p for p, i in zip(paths, items, strict=True) if _mutated(i)]
        skipped = [p for p, i in zip(paths, items, strict=True) if not _mutated(i)]
        credentials = next(p for p, i in zip(paths, items, strict=True) if i.name == RATIO_REVIEW)
        hey_bodies = [credentials if credentials in mutated else mutated[len(mutated) // 2]]
        hey_bodies.append(skipped[len(skipped) // 2])
        ratio_item = next(i for i, item in enumerate(items) if item.name == RATIO_REVIEW)
        ratio_list = work / "ratio-review.txt"
        ratio_list.write_text(f"{paths[ratio_item]}\n")
        # the same pod with a different generateName each time: the memo never hits
        distinct_paths = []
        for n in range(DISTINCT_PODS):
            variant = json.loads(items[ratio_item].body)
            meta = variant["request"]["object"]["metadata"]
            meta["generateName"] = f"{meta.get('generateName', 'pod-')}{n:04d}-"
            path = work / f"distinct-{n:04d}.json"
            path.write_bytes(json.dumps(variant, separators=(",", ":")).encode())
            distinct_paths.append(path)
        distinct_list = work / "distinct-reviews.txt"
        distinct_list.write_text("".join(f"{p}\n" for p in distinct_paths))
        configs = [
            bench_config(
                work,
                items,
                list_file,
                hey_bodies,
                workers=n,
                args=args,
                ratio_list=ratio_list if n == 1 else None,
                distinct_list=distinct_list if n == 1 else None,
            )
            for n in worker_counts
        ]
        benches = in_process(work)

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "workload": {
            "items": [{"name": i.name, "bytes": len(i.body)} for i in items],
            "min_bytes": min(len(i.body) for i in items),
            "max_bytes": max(len(i.body) for i in items),
            "mix": outcome_mix(items),
            "hey_bodies": [
                {"name": items[paths.index(p)].name, "bytes": len(items[paths.index(p)].body)}
                for p in hey_bodies
            ],
        },
        "configs": configs,
        "in_process": benches,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(render(results))
    print(render(results))
    print(f"results in {args.out}", file=sys.stderr)
    return 0


def _mutated(item: Item) -> bool:
    from webhook.clusterconfig import ClusterConfig
    from webhook.review import review_body

    return review_body(item.review, config=ClusterConfig()).decision.kind == "mutated"


if __name__ == "__main__":
    sys.exit(main())
