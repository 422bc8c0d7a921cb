"""gc on shared storage: a fresh entry never looks old, an unreadable usage record means "in use
now", the final check after the rename aside restores an entry a fetch just used, leases are
broken without deleting anything, and gc without a budget says what it will do."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.ops.helpers import DAY, before_rename, build_entry, entry_problems, gc_json, run_cli
from webhook.cache.gc import Budget, execute, plan_gc, scan
from webhook.cache.layout import Layout, list_keys, record_usage
from webhook.cache.lease import Heartbeat, generations, read_holder, try_acquire


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    return layout


def test_an_old_usage_record_does_not_make_a_fresh_entry_look_old(layout: Layout) -> None:
    """Planted bug (a): the key was used 30 days ago, evicted, and published again just now
    (never hit since). Its old record must not override the fresh publish time."""
    now = time.time()
    fresh = build_entry(layout, "fresh", size=1000, last_used=now - 30 * DAY, created_at=now)
    old = build_entry(layout, "old", size=1000, last_used=now - 30 * DAY, created_at=now - 40 * DAY)
    snapshot = scan(layout, now=now, lease_ttl=120)
    last_used = {e.key: e.last_used for e in snapshot.entries}
    assert last_used[fresh.key] == pytest.approx(now, abs=5)
    code, report, err = gc_json("--cache-root", str(layout.root), "--max-age", "7d",
                                "--grace", "0", "--no-cluster")  # fmt: skip
    assert code == 0, err
    assert [e["key"] for e in report["plan"]["evict"]] == [old.key]
    assert list_keys(layout) == [fresh.key]
    assert entry_problems(layout, fresh.key) == []


@pytest.mark.parametrize("garbage", [b"", b'{"last_used": ', b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_usage_record_means_in_use(layout: Layout, garbage: bytes) -> None:
    now = time.time()
    built = build_entry(layout, "m", size=1000, last_used=now - 30 * DAY, created_at=now - 40 * DAY)
    layout.usage_file(built.key).write_bytes(garbage)  # a torn or stale read of another node
    code, report, err = gc_json("--cache-root", str(layout.root), "--max-bytes", "0",
                                "--grace", "0", "--no-cluster")  # fmt: skip
    assert code == 0, err
    assert report["plan"]["evict"] == []
    assert [(e["key"], e["reason"]) for e in report["plan"]["keep"]] == [
        (built.key, "usage-unreadable")
    ]
    assert entry_problems(layout, built.key) == []


def test_a_record_unreadable_after_the_rename_restores_the_entry(layout: Layout) -> None:
    now = time.time()
    key = build_entry(layout, "m", size=5000, last_used=now - DAY, created_at=now - DAY).key
    budget = Budget(max_bytes=0, grace=3600)
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=budget, now=now, in_use=None)
    assert [d.key for d in plan.evict] == [key]
    # right before the rename: another node rewrites the record, and it is cut short
    clock = before_rename(lambda: layout.usage_file(key).write_bytes(b'{"last_used": 1'))
    outcome = execute(layout, plan, budget=budget, clock=clock)
    assert outcome.evicted == []
    assert outcome.skipped == {key: "used-during-eviction"}
    assert entry_problems(layout, key) == []
    assert list(layout.trash.iterdir()) == []


def test_a_use_newer_than_the_plan_restores_the_entry_even_without_grace(layout: Layout) -> None:
    now = time.time()
    key = build_entry(layout, "m", size=5000, last_used=now - DAY, created_at=now - DAY).key
    budget = Budget(max_bytes=0, grace=0)
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=budget, now=now, in_use=None)
    clock = before_rename(lambda: record_usage(layout, key, "hit"))
    outcome = execute(layout, plan, budget=budget, clock=clock)
    assert outcome.skipped == {key: "used-during-eviction"}
    assert entry_problems(layout, key) == []


def test_a_lease_that_is_rewritten_is_never_broken_however_old_it_was(layout: Layout) -> None:
    now = time.time()
    built = build_entry(layout, "m", size=1000, last_used=now - DAY, created_at=now - DAY)
    lease = try_acquire(layout, built.key, holder="slow-but-alive")
    assert lease is not None
    old = now - 3 * DAY
    os.utime(lease.path, (old, old))  # created long ago...
    with Heartbeat(lease, interval=0.1):  # ...and rewritten all along
        code, report, err = gc_json("--cache-root", str(layout.root), "--max-bytes", "0",
                                    "--grace", "0", "--lease-ttl", "5", "--no-cluster")  # fmt: skip
    assert code == 0, err
    assert report["plan"]["dead_leases"] == []
    assert lease.is_mine()
    assert generations(layout, built.key) == [1]
    holder = read_holder(layout, built.key)
    assert holder is not None
    assert holder.holder == "slow-but-alive"


def test_gc_without_a_budget_says_it_evicts_nothing(layout: Layout) -> None:
    now = time.time()
    build_entry(layout, "m", size=1000, last_used=now - 30 * DAY, created_at=now - 40 * DAY)
    proc = run_cli("gc", "--cache-root", str(layout.root), "--no-cluster")
    assert proc.returncode == 0, proc.stderr
    assert "no budget given" in proc.stderr
    assert "no entry is evicted" in proc.stderr
    assert len(list_keys(layout)) == 1


def test_a_use_seen_only_after_the_cache_margin_restores_the_entry(layout: Layout) -> None:
    """Through a client cache, another node's use may show only seconds later: the final check
    waits the cache margin with the entry in .trash, then reads the record again."""
    import threading

    now = time.time()
    key = build_entry(layout, "m", size=5000, last_used=now - DAY, created_at=now - DAY).key
    budget = Budget(max_bytes=0, grace=0, cache_margin=1.5)
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=budget, now=now, in_use=None)
    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.update(out=execute(layout, plan, budget=budget))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while layout.entry(key).exists():  # renamed aside: now in its margin
        assert time.monotonic() < deadline
        time.sleep(0.01)
    record_usage(layout, key, "hit")  # what the stale client would only have shown later
    worker.join(10)
    outcome = result["out"]
    assert outcome.skipped == {key: "used-during-eviction"}  # type: ignore[attr-defined]
    assert entry_problems(layout, key) == []


def test_cache_margin_is_zero_on_a_local_filesystem(tmp_path: Path) -> None:
    from webhook.cache.gc import cache_margin_for, filesystem_type

    assert filesystem_type(tmp_path) in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs")
    assert cache_margin_for(tmp_path) == 0.0
