"""The cache protocol on GlusterFS with three client mounts (three simulated nodes): real
`kserve-cache fetch` and `gc` processes on different mounts, against the local moto S3.

Every test checks what is served (sha256 of every file against the source) and, where it
says one download, the object GETs the S3 server counted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import S3, run_fetch
from webhook.cache.layout import Layout, record_usage
from webhook.cache.probe import ensure_probed
from webhook.keys import cache_key

from .conftest import MANY_FILES, Nodes
from .procs import Proc, children, digests, expected, gc_args, leaves, spawn, spawn_fetch

pytestmark = pytest.mark.netfs

LLAMA = "s3://models/llama"
MANY = "s3://models/many"
BIG = "s3://models/big"
FAST = ("--lease-ttl=1", "--wait-timeout=120")
CACHING = {"performance.md-cache-timeout": "60"}
STICKY = {**CACHING, "--attribute-timeout": "60", "--entry-timeout": "60"}


def key_of(uri: str) -> str:
    return cache_key(uri, "")


def assert_served(path: Path, s3: S3, prefix: str) -> None:
    assert digests(path) == expected(s3.objects, prefix), f"{path} does not hold {prefix}"


def staging_of(brick: Path, key: str) -> list[Path]:
    staging = brick / ".staging"
    return sorted(p for p in staging.glob(f"{key}.*") if p.is_dir()) if staging.is_dir() else []


def test_concurrent_cold_start_on_three_nodes_downloads_once(gluster: Nodes, models: S3) -> None:
    models.reset_counts()
    procs = [spawn_fetch(LLAMA, gluster[i % 3], env=models.env(), extra=FAST) for i in range(9)]
    runs = [p.finish(timeout=180) for p in procs]
    assert [r.code for r in runs] == [0] * 9, [r.stderr[-800:] for r in runs if r.code]
    outcomes = sorted(r.result["outcome"] for r in runs)
    assert outcomes.count("miss") == 1, outcomes
    assert models.counts()["object_gets"] == 3, "one download of the 3 objects"
    for i, run in enumerate(runs):
        # Each pod reads the entry through its own node's mount.
        assert_served(gluster[i % 3] / "models" / key_of(LLAMA), models, "llama")
        assert run.result["files"] == 3
    assert_served(gluster.brick / "models" / key_of(LLAMA), models, "llama")


# phase -> object GETs in all (the killed holder's, then the one download of its successor)
KILL_POINTS = [
    pytest.param("leased", 3, id="leased"),
    pytest.param("downloaded", 6, id="downloaded"),
    pytest.param("sealed", 6, id="sealed"),
    pytest.param("published", 3, id="published"),
]


@pytest.mark.parametrize(("phase", "gets"), KILL_POINTS)
def test_kill_9_of_the_holder_is_taken_over(
    gluster: Nodes, models: S3, phase: str, gets: int
) -> None:
    models.reset_counts()
    holder = spawn_fetch(LLAMA, gluster[0], env=models.env(), pause=f"{phase}=60", extra=FAST)
    assert holder.wait_for("pausing"), holder.stderr
    waiter = spawn_fetch(LLAMA, gluster[1], env=models.env(), extra=FAST)
    holder.kill()
    run = waiter.finish(timeout=120)
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["outcome"] in (("miss",) if phase != "published" else ("hit", "waited"))
    assert_served(gluster[1] / "models" / key_of(LLAMA), models, "llama")
    third = run_fetch(LLAMA, gluster[2], env=models.env(), extra=FAST)
    assert third.code == 0, third.stderr
    assert third.result["outcome"] == "hit"
    assert_served(gluster[2] / "models" / key_of(LLAMA), models, "llama")
    assert models.counts()["object_gets"] == gets
    assert staging_of(gluster.brick, key_of(LLAMA)) == [], "the dead holder's staging is gone"


def test_remove_versus_publish_has_one_winner(gluster: Nodes, models: S3) -> None:
    """A holder frozen after sealing loses its lease; the successor removes its staging folder
    while the old holder, thawed at that moment, publishes it. Whoever says "ready" must point
    at a complete entry."""
    key = key_of(MANY)
    old = spawn_fetch(MANY, gluster[0], env=models.env(), pause="sealed=1", extra=FAST)
    assert old.wait_for("pausing"), old.stderr
    old.signal(signal.SIGSTOP)  # no heartbeat from now on: its lease looks dead, rightly
    try:
        (mine,) = staging_of(gluster.brick, key)
        count = sum(1 for _ in mine.rglob("*"))
        assert count > MANY_FILES
        new = spawn_fetch(MANY, gluster[1], env=models.env(), pause="leased=3", extra=FAST)
        # Thaw the old holder the moment its staging folder starts to go (or goes at once).
        end = time.monotonic() + 90
        while mine.exists() and sum(1 for _ in mine.rglob("*")) >= count:
            assert time.monotonic() < end, new.stderr[-2000:]
            time.sleep(0.005)
    finally:
        old.signal(signal.SIGCONT)
    first = old.finish(timeout=120)
    if first.code == 0:
        # It said ready: the entry must be complete now, while its successor is still busy.
        assert_served(gluster[2] / "models" / key, models, "many")
    second = new.finish(timeout=120)
    assert second.code == 0, second.stderr[-2000:]
    assert_served(gluster[1] / "models" / key, models, "many")
    final = run_fetch(MANY, gluster[2], env=models.env(), extra=FAST)
    assert final.code == 0, final.stderr
    assert_served(Path(final.result["path"]), models, "many")
    assert_served(gluster.brick / "models" / key, models, "many")


@pytest.mark.parametrize("gluster_options", [STICKY])
def test_a_live_lease_seen_through_stale_caches_is_not_broken(gluster: Nodes, models: S3) -> None:
    """md-cache-timeout 60 and a 1 s TTL: the waiters' clients keep showing an old lease, but
    the holder is alive; breaking it would start a second (and a third) download."""
    models.reset_counts()
    holder = spawn_fetch(LLAMA, gluster[0], env=models.env(), pause="leased=6", extra=FAST)
    assert holder.wait_for("pausing"), holder.stderr
    waiters = [spawn_fetch(LLAMA, gluster[i], env=models.env(), extra=FAST) for i in (1, 2, 1, 2)]
    runs = [holder.finish(timeout=120)] + [w.finish(timeout=120) for w in waiters]
    assert [r.code for r in runs] == [0] * 5, [r.stderr[-1500:] for r in runs if r.code]
    assert runs[0].result["outcome"] == "miss"
    assert [r.result["outcome"] for r in runs[1:]].count("miss") == 0
    assert models.counts()["object_gets"] == 3, "exactly one download"
    for i in range(3):
        assert_served(gluster[i] / "models" / key_of(LLAMA), models, "llama")


@pytest.mark.parametrize("gluster_options", [{"performance.md-cache-timeout": "5"}])
def test_gc_on_one_node_keeps_an_entry_another_node_hits(gluster: Nodes, models: S3) -> None:
    """gc on node 1 reads the usage record through its stale cache (md-cache 5 s) just after
    node 0 used the entry; with a cache margin above 5 s it must keep the entry. (A pod that
    starts during the margin finds the entry aside and downloads it again: not asserted.)"""
    key = key_of(LLAMA)
    first = run_fetch(LLAMA, gluster[0], env=models.env(), extra=FAST)
    assert first.code == 0, first.stderr
    # Make the entry look two hours old (manifest and usage record), as seen from node 1.
    old = time.time() - 7200
    manifest = gluster[0] / "models" / key / ".kserve-cache.json"
    data = json.loads(manifest.read_text())
    data["created_at"] = old
    manifest.write_text(json.dumps(data))
    plant_usage(gluster[0], key, old)
    assert json.loads((gluster[1] / ".usage" / key).read_text())["last_used"] == old
    # Node 0 uses the entry now (as its hits do: the record replaced by a rename).
    record_usage(Layout(gluster[0]), key, "hit")
    assert json.loads((gluster.brick / ".usage" / key).read_text())["last_used"] > old + 3600
    assert json.loads((gluster[1] / ".usage" / key).read_text())["last_used"] == old, (
        "node 1 still sees the old record (else this test shows nothing)"
    )
    models.reset_counts()
    gc = spawn(
        gc_args(
            gluster[1], "--max-age=1h", "--grace=10m", "--no-cluster", "--cache-margin=7s",
            "--json",
        ),
        env=models.env(),
    )  # fmt: skip
    gc_run = gc.finish(timeout=180)
    assert gc_run.code == 0, gc_run.stderr[-2000:]
    kept = json.loads((gluster.brick / "models" / key / ".kserve-cache.json").read_text())
    assert kept["created_at"] == old, "the entry was evicted (what is there is a new download)"
    assert_served(gluster.brick / "models" / key, models, "llama")
    for node in (2,):
        again = run_fetch(LLAMA, gluster[node], env=models.env(), extra=FAST)
        assert again.code == 0, again.stderr
        assert again.result["outcome"] == "hit"
        assert_served(Path(again.result["path"]), models, "llama")
    assert models.counts()["object_gets"] == 0, "nothing was downloaded again"


def plant_usage(root: Path, key: str, last_used: float) -> None:
    record: dict[str, Any] = {"last_used": last_used, "hits": 0, "misses": 1, "waits": 0}
    record["recent"] = []
    tmp = root / ".usage" / f".{key}.planted.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(root / ".usage" / key)


def _moto_pid() -> int:
    for pid in children(os.getpid()):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"servers.py" in cmdline and b"s3" in cmdline:
            return pid
    raise AssertionError("the moto server is not a child of this test process")


def _wait_workers(proc: Proc, count: int) -> list[int]:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        kids = leaves(proc.pid)  # before the pool: at most one (a download process)
        if len(kids) >= count:
            return kids
        assert proc.popen.poll() is None, proc.stderr[-2000:]
        time.sleep(0.02)
    raise AssertionError(f"no download workers under {proc.pid}: {proc.stderr[-2000:]}")


def test_a_download_whose_worker_dies_is_stalled_not_hung(gluster: Nodes, models: S3) -> None:
    """KServe's downloader runs a process pool; a worker killed (OOM) mid-download leaves the
    pool waiting forever. The holder's watchdog must abort it (exit 10) and a waiter take over."""
    moto = _moto_pid()
    ensure_probed(gluster[0])  # no probe child process to mistake for a download worker
    extra = (*FAST, "--stall-timeout=3")
    holder = spawn_fetch(BIG, gluster[0], env=models.env(), extra=extra)
    waiter: Proc | None = None
    try:
        _wait_workers(holder, 3)
        os.kill(moto, signal.SIGSTOP)  # the workers' GETs hang in the server from now on
        try:
            time.sleep(1.0)  # the workers pick up their objects
            workers = leaves(holder.pid)
            assert len(workers) >= 3, workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        finally:
            os.kill(moto, signal.SIGCONT)
        waiter = spawn_fetch(BIG, gluster[1], env=models.env(), extra=extra)
        stalled = holder.finish(timeout=90)
        assert stalled.code == 10, stalled.stderr[-2000:]
        assert stalled.result["error"] == "stalled"
        run = waiter.finish(timeout=120)
        assert run.code == 0, run.stderr[-2000:]
        assert run.result["outcome"] == "miss"
        assert_served(gluster[1] / "models" / key_of(BIG), models, "big")
        assert_served(gluster[2] / "models" / key_of(BIG), models, "big")
    finally:
        holder.kill()
        if waiter is not None:
            waiter.kill()
