"""`kserve-cache stats` on a real cache: JSON figures, a window, Prometheus text that
`prometheus_client`'s own parser reads back, and clear errors for bad arguments."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.helpers import CLI, DAY, build_entry, run_cli, tree_state
from webhook.cache.layout import Layout, record_usage
from webhook.cache.stats import compute_stats

HOUR = 3600.0


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Layout, dict[str, str]]:
    """Two entries and one evicted key, with uses inside and outside the last 24 hours.

    alpha: 3 hits + 1 miss within 24 h, 2 hits 3 days ago.
    beta:  1 waited within 24 h, 1 miss 2 days ago.
    gone:  (no entry) 1 miss within 24 h.
    """
    (tmp_path / "cache").mkdir()
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    now = time.time()
    alpha = build_entry(layout, "alpha", size=3000, last_used=None, created_at=now - 4 * DAY)
    beta = build_entry(layout, "beta", size=1234, last_used=None, created_at=now - 3 * DAY)
    for outcome, ago in [("hit", 3 * DAY), ("hit", 3 * DAY), ("miss", 5 * HOUR)] + [
        ("hit", HOUR)
    ] * 3:
        record_usage(layout, alpha.key, outcome, now=now - ago)
    record_usage(layout, beta.key, "miss", now=now - 2 * DAY)
    record_usage(layout, beta.key, "waited", now=now - 2 * HOUR)
    gone = "gone-0123456789abcdef"
    record_usage(layout, gone, "miss", now=now - 10 * HOUR)
    (layout.staging / f"{gone}.abc123").mkdir()
    (layout.locks / gone).write_text('{"holder": "x", "created": 1}')
    return layout, {"alpha": alpha.key, "beta": beta.key, "gone": gone}


def test_json_figures(cache: tuple[Layout, dict[str, str]]) -> None:
    layout, keys = cache
    before = tree_state(layout.root)
    proc = run_cli("stats", "--cache-root", str(layout.root), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["entries"] == 2
    assert data["bytes"] == 4234
    assert (data["hits"], data["misses"], data["waits"]) == (5, 3, 1)
    # Within 24 h: 3 hits, 2 misses (alpha, gone), 1 wait.
    # alpha (3000 bytes) served 3 hits and 1 miss; gone's miss counts 0 bytes (evicted)
    assert data["window"] == {
        "hits": 3,
        "misses": 2,
        "waits": 1,
        "hit_rate": 0.5,
        "hit_bytes": 9000,
        "miss_bytes": 3000,
    }
    assert data["window_seconds"] == 86400
    assert data["staging_folders"] == 1
    assert data["leases"] == 1
    fs = data["filesystem"]
    assert fs["total_bytes"] >= fs["used_bytes"] + fs["free_bytes"] > 0
    by_key = {k["key"]: k for k in data["keys"]}
    assert set(by_key) == set(keys.values())
    alpha = by_key[keys["alpha"]]
    assert alpha["present"] is True
    assert alpha["uri"] == "s3://bucket/alpha"
    assert (alpha["bytes"], alpha["files"]) == (3000, 2)
    assert (alpha["hits"], alpha["misses"], alpha["waits"]) == (5, 1, 0)
    assert alpha["window"] == {"hits": 3, "misses": 1, "waits": 0}
    assert by_key[keys["gone"]]["present"] is False
    assert by_key[keys["gone"]]["bytes"] == 0
    assert tree_state(layout.root) == before  # read-only


def test_window_changes_the_hit_rate(cache: tuple[Layout, dict[str, str]]) -> None:
    layout, _ = cache
    proc = run_cli("stats", "--cache-root", str(layout.root), "--json", "--window", "7d")
    data = json.loads(proc.stdout)
    assert data["window"] == {
        "hits": 5,
        "misses": 3,
        "waits": 1,
        "hit_rate": 5 / 9,
        "hit_bytes": 15000,
        "miss_bytes": 3000 + 1234,
    }
    proc = run_cli("stats", "--cache-root", str(layout.root), "--json", "--window", "30m")
    assert json.loads(proc.stdout)["window"] == {
        "hits": 0,
        "misses": 0,
        "waits": 0,
        "hit_rate": None,
        "hit_bytes": 0,
        "miss_bytes": 0,
    }


def test_prometheus_text_parses(cache: tuple[Layout, dict[str, str]]) -> None:
    layout, keys = cache
    proc = run_cli("stats", "--cache-root", str(layout.root), "--prometheus")
    assert proc.returncode == 0, proc.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(proc.stdout)
        for s in family.samples
    }
    types = {f.name: f.type for f in text_string_to_metric_families(proc.stdout)}
    assert samples[("kserve_cache_entries", ())] == 2
    assert samples[("kserve_cache_bytes", ())] == 4234
    assert samples[("kserve_cache_entry_bytes", (("key", keys["alpha"]),))] == 3000
    assert samples[("kserve_cache_entry_bytes", (("key", keys["beta"]),))] == 1234
    assert samples[("kserve_cache_hits_total", (("key", keys["alpha"]),))] == 5
    assert samples[("kserve_cache_misses_total", (("key", keys["gone"]),))] == 1
    assert samples[("kserve_cache_waits_total", (("key", keys["beta"]),))] == 1
    assert samples[("kserve_cache_window_hit_ratio", (("window", "24h"),))] == 0.5
    assert samples[("kserve_cache_window_misses", (("window", "24h"),))] == 2
    assert samples[("kserve_cache_free_bytes", ())] > 0
    assert samples[("kserve_cache_staging_folders", ())] == 1
    assert ("kserve_cache_entry_bytes", (("key", keys["gone"]),)) not in samples
    assert types["kserve_cache_hits"] == "counter"
    assert types["kserve_cache_entries"] == "gauge"


def test_table_on_a_terminal(cache: tuple[Layout, dict[str, str]]) -> None:
    layout, keys = cache
    proc = run_cli("stats", "--cache-root", str(layout.root))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["KEY", "SIZE", "LAST", "USED", "HITS", "MISSES", "WAITS",
                                "24h", "H/M/W"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows[keys["alpha"]][-4:] == ["5", "1", "0", "3/1/0"]
    assert rows[keys["gone"]][1] == "(evicted)"
    assert "hit rate (24h): 50.0% (3 hits, 2 misses, 1 waits)" in proc.stdout
    assert "entries: 2, size: 4.1 KiB" in proc.stdout


def test_empty_cache(tmp_path: Path) -> None:
    proc = run_cli("stats", "--cache-root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "the cache is empty" in proc.stdout
    proc = run_cli("stats", "--cache-root", str(tmp_path), "--prometheus")
    names = {f.name for f in text_string_to_metric_families(proc.stdout)}
    assert "kserve_cache_entries" in names
    assert "kserve_cache_window_hit_ratio" not in names  # no uses: no ratio rather than NaN


def test_compute_stats_counts_only_the_window() -> None:
    from webhook.cache.layout import Usage

    usage = Usage("a-0000000000000001", 100.0, hits=2, misses=1, waits=0,
                  recent=[(10.0, "hit"), (90.0, "hit"), (95.0, "miss")])  # fmt: skip
    stats = compute_stats(manifests={}, sizes={}, usages={usage.key: usage}, now=100.0, window=50.0)
    (only,) = stats.keys
    assert (only.window_hits, only.window_misses, only.present) == (1, 1, False)
    assert stats.hit_rate == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "soon"], "not a duration"),
        (["--window", "0"], "more than zero"),
        (["--json", "--prometheus"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli("stats", "--cache-root", str(tmp_path), *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_missing_cache_root_exits_2(tmp_path: Path) -> None:
    proc = run_cli("stats", "--cache-root", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr


def _start_exporter(root: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            str(CLI),
            "stats",
            "--cache-root",
            str(root),
            "--serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/metrics", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no address in {line!r}: {proc.communicate()}")
    return proc, match.group(1)


def _scrape(url: str) -> dict[str, float]:
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    figures = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            figures[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return figures


def test_exporter_serves_the_figures_and_writes_nothing(
    cache: tuple[Layout, dict[str, str]],
) -> None:
    layout, keys = cache
    before = tree_state(layout.root)
    proc, url = _start_exporter(layout.root, "--min-interval", "0")
    try:
        first = _scrape(url)
        assert first["kserve_cache_entries"] == 2
        assert first["kserve_cache_bytes"] == 4234
        assert first["kserve_cache_window_hit_ratio{window=24h}"] == 0.5
        assert first["kserve_cache_window_hit_bytes{window=24h}"] == 9000
        assert first["kserve_cache_window_miss_bytes{window=24h}"] == 3000
        assert first[f"kserve_cache_hits_total{{key={keys['alpha']}}}"] == 5
        assert first["kserve_cache_free_bytes"] > 0
        assert "kserve_cache_exporter_collect_seconds" in first
        assert httpx.get(f"{url}/healthz", timeout=30).text == "ok\n"
        assert httpx.get(f"{url}/nope", timeout=30).status_code == 404
        assert tree_state(layout.root) == before  # read-only
        # a new hit shows on the next scrape (min-interval 0)
        record_usage(layout, keys["beta"], "hit")
        second = _scrape(url)
        assert second[f"kserve_cache_hits_total{{key={keys['beta']}}}"] == 1
        assert second["kserve_cache_window_hit_bytes{window=24h}"] == 9000 + 1234
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_exporter_reads_the_volume_at_most_every_min_interval(
    cache: tuple[Layout, dict[str, str]],
) -> None:
    from webhook.cli.stats import Exporter

    layout, keys = cache
    exporter = Exporter(layout.root, window=86400.0, min_interval=3600.0)
    first = exporter.text()
    record_usage(layout, keys["beta"], "hit")
    assert exporter.text() == first
    assert exporter.collections == 1
    exporter.min_interval = 0.0
    assert exporter.text() != first
    assert exporter.collections == 2


def test_exporter_refuses_a_port_in_use(cache: tuple[Layout, dict[str, str]]) -> None:
    layout, _ = cache
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(
            "stats",
            "--cache-root",
            str(layout.root),
            "--serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
    assert proc.returncode == 2
    assert "cannot listen on 127.0.0.1" in proc.stderr


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_exporter_bad_port(cache: tuple[Layout, dict[str, str]], port: str) -> None:
    layout, _ = cache
    proc = run_cli("stats", "--cache-root", str(layout.root), "--serve", "--port", port)
    assert proc.returncode == 2
    assert "--port" in proc.stderr


@pytest.fixture
def read_only_view(cache: tuple[Layout, dict[str, str]], tmp_path: Path) -> Iterator[Path]:
    """The cache root bind-mounted read-only, as a pod's `readOnly: true` claim mount is."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    view = tmp_path / "ro"
    view.mkdir()
    layout, _ = cache
    done = subprocess.run(["mount", "--bind", str(layout.root), str(view)], check=False)
    if done.returncode != 0:
        pytest.skip("mount --bind is not allowed here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_exporter_on_a_read_only_mount(read_only_view: Path) -> None:
    with pytest.raises(OSError, match="Read-only file system"):
        (read_only_view / "probe").write_text("x")
    proc, url = _start_exporter(read_only_view, "--min-interval", "0")
    try:
        figures = _scrape(url)
        assert figures["kserve_cache_entries"] == 2
        assert figures["kserve_cache_window_hit_ratio{window=24h}"] == 0.5
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_exporter_says_503_while_the_volume_is_gone_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    proc, url = _start_exporter(root, "--min-interval", "0")
    try:
        assert _scrape(url)["kserve_cache_entries"] == 0
        (root / "models").rmdir()
        root.rmdir()
        gone = httpx.get(f"{url}/metrics", timeout=30)
        assert gone.status_code == 503
        assert f"cannot read {root}" in gone.text
        (root / "models").mkdir(parents=True)
        assert _scrape(url)["kserve_cache_entries"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cannot read the cache figures" in err
