"""The cache protocol on faultfs: correct on the safe faults (EPERM for lost races, ESTALE on
reads), and, on the unsafe ones an admin forced with --allow-unsafe-volume, never a success
on an entry that is not complete."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import CLI, S3, run_fetch
from webhook.keys import cache_key

from .faultfs import FaultFS
from .procs import digests, expected, spawn_fetch

pytestmark = pytest.mark.faultfs

LLAMA = "s3://models/llama"
KEY = cache_key(LLAMA, "")
FAST = ("--lease-ttl=2", "--wait-timeout=120")
UNSAFE = (*FAST, "--allow-unsafe-volume")


def served(path: Path, s3: S3) -> bool:
    return digests(path) == expected(s3.objects, "llama")


def test_passthrough_three_concurrent_fetches_download_once(faultfs: FaultFS, s3: S3) -> None:
    s3.reset_counts()
    procs = [spawn_fetch(LLAMA, faultfs.root, env=s3.env(), extra=FAST) for _ in range(3)]
    runs = [p.finish(timeout=180) for p in procs]
    assert [r.code for r in runs] == [0, 0, 0], [r.stderr[-1500:] for r in runs if r.code]
    assert sorted(r.result["outcome"] for r in runs).count("miss") == 1
    assert s3.counts()["object_gets"] == 3
    assert served(faultfs.root / "models" / KEY, s3)
    assert served(faultfs.backing_root / "models" / KEY, s3)


def test_eperm_on_a_lost_publish_race_is_a_lost_race(faultfs: FaultFS, s3: S3) -> None:
    """sshfs reports EPERM when a rename loses to an existing folder: that is a rival's
    publish (serve it), not "cache not writable"."""
    faultfs.set(eperm=True)
    holder = spawn_fetch(LLAMA, faultfs.root, env=s3.env(), pause="sealed=3", extra=FAST)
    assert holder.wait_for("pausing"), holder.stderr
    # A rival publishes the same entry meanwhile (a complete copy of the sealed folder).
    (staging,) = (faultfs.backing_root / ".staging").glob(f"{KEY}.*")
    shutil.copytree(staging, faultfs.backing_root / "models" / KEY)
    run = holder.finish(timeout=120)
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["outcome"] == "hit"
    assert served(faultfs.root / "models" / KEY, s3)


def _age_entry(faultfs: FaultFS) -> None:
    """Make the published entry and its usage record look two hours old (on the backing)."""
    old = time.time() - 7200
    manifest = faultfs.backing_root / "models" / KEY / ".kserve-cache.json"
    data = json.loads(manifest.read_text())
    data["created_at"] = old
    manifest.write_text(json.dumps(data))
    record: dict[str, Any] = {"last_used": old, "hits": 3, "misses": 1, "waits": 0, "recent": []}
    (faultfs.backing_root / ".usage" / KEY).write_text(json.dumps(record))


def test_gc_keeps_an_entry_whose_usage_record_is_estale(faultfs: FaultFS, s3: S3) -> None:
    first = run_fetch(LLAMA, faultfs.root, env=s3.env(), extra=FAST)
    assert first.code == 0, first.stderr
    _age_entry(faultfs)
    faultfs.set(estale=["*/.usage/*"], estale_times=0)
    gc = subprocess.run(
        [str(CLI), "gc", "--cache-root", str(faultfs.root), "--max-age=1h", "--grace=10m",
         "--no-cluster", "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    assert served(faultfs.backing_root / "models" / KEY, s3), (
        "an unreadable usage record means in use: " + gc.stdout
    )


def test_a_hit_whose_manifest_read_is_estale_once_still_serves(faultfs: FaultFS, s3: S3) -> None:
    first = run_fetch(LLAMA, faultfs.root, env=s3.env(), extra=FAST)
    assert first.code == 0, first.stderr
    # 2: the kernel retries an ESTALE open once, so the fetcher sees one failed open.
    faultfs.set(estale=["*/models/*/.kserve-cache.json"], estale_times=2)
    run = run_fetch(LLAMA, faultfs.root, env=s3.env(), extra=FAST)
    assert run.code == 0, run.stderr[-2000:]
    assert served(Path(run.result["path"]), s3)


@pytest.mark.parametrize("order", ["manifest-first", "file-by-file"])
def test_a_waiter_never_succeeds_on_a_half_copied_entry(
    faultfs: FaultFS, s3: S3, order: str
) -> None:
    """Folder rename as a copy (object-storage FUSE, forced with the override): a waiter that
    sees the manifest before all files must not report success on the partial entry."""
    faultfs.set(rename_copy=order, copy_delay=0.3)
    holder = spawn_fetch(LLAMA, faultfs.root, env=s3.env(), pause="sealed=1.5", extra=UNSAFE)
    assert holder.wait_for("pausing"), holder.stderr
    waiter = spawn_fetch(LLAMA, faultfs.root, env=s3.env(), extra=UNSAFE)
    run = waiter.finish(timeout=120)
    complete_when_it_returned = served(faultfs.backing_root / "models" / KEY, s3)
    first = holder.finish(timeout=120)
    if run.code == 0:
        assert complete_when_it_returned, "success was reported on an incomplete entry"
        assert served(Path(run.result["path"]), s3)
    if first.code == 0:
        assert served(faultfs.root / "models" / KEY, s3)


def test_a_rename_that_reports_failure_after_it_happened(faultfs: FaultFS, s3: S3) -> None:
    """Forced with the override: whatever fetch says, what it serves is complete, and the
    next pod hits."""
    faultfs.set(rename_lies=True)
    run = run_fetch(LLAMA, faultfs.root, env=s3.env(), extra=UNSAFE)
    if run.code == 0:
        assert served(Path(run.result["path"]), s3)
    faultfs.set()  # the volume's record still says unsafe: the override stays needed
    again = run_fetch(LLAMA, faultfs.root, env=s3.env(), extra=UNSAFE)
    assert again.code == 0, again.stderr[-2000:]
    assert served(Path(again.result["path"]), s3)


def test_an_estale_lease_read_does_not_break_a_live_lease(faultfs: FaultFS, s3: S3) -> None:
    """A waiter whose read of the lease fails with ESTALE must not take it for "no lease"."""
    s3.reset_counts()
    holder = spawn_fetch(LLAMA, faultfs.root, env=s3.env(), pause="leased=4", extra=FAST)
    assert holder.wait_for("pausing"), holder.stderr
    faultfs.set(estale=["*/.locks/*"], estale_times=2)
    waiters = [spawn_fetch(LLAMA, faultfs.root, env=s3.env(), extra=FAST) for _ in range(2)]
    runs = [holder.finish(timeout=120)] + [w.finish(timeout=120) for w in waiters]
    assert [r.code for r in runs] == [0, 0, 0], [r.stderr[-1500:] for r in runs if r.code]
    assert runs[0].result["outcome"] == "miss"
    assert s3.counts()["object_gets"] == 3, "one download"
    for run in runs:
        assert served(Path(run.result["path"]), s3)
