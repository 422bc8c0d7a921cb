"""`kserve-cache gc` as a real process on a real cache volume, with the real `kubernetes` client
against a fake API server for the in-use check."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fakekube import FakeKube
from tests.ops.helpers import (
    DAY,
    Built,
    build_entry,
    entry_problems,
    gc_json,
    pod,
    run_cli,
    tree_state,
)
from webhook.cache.layout import Layout, list_keys
from webhook.cache.lease import new_holder_id, read_holder, try_acquire


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    return layout


def twelve(layout: Layout) -> list[Built]:
    """m0..m11: m<i> holds 1000*(i+1) bytes, last used i+1 days ago (m11 is the oldest).
    m3 has no usage record: its created_at (4 days ago) stands in. Total 78000 bytes."""
    now = time.time()
    built = []
    for i in range(12):
        when = now - (i + 1) * DAY
        built.append(
            build_entry(
                layout,
                f"m{i}",
                size=1000 * (i + 1),
                last_used=None if i == 3 else when,
                created_at=when if i == 3 else now - 30 * DAY,
                files=1 + i % 3,
            )
        )
    return built


def keys(built: list[Built], *indexes: int) -> list[str]:
    return [built[i].key for i in indexes]


def check_volume(layout: Layout, expected: list[str]) -> None:
    """Exactly these entries remain, each whole, the sizes add up, no trash is left."""
    assert list_keys(layout) == sorted(expected)
    for key in expected:
        assert entry_problems(layout, key) == []
    assert not layout.trash.exists() or list(layout.trash.iterdir()) == []


def test_byte_budget_plan_and_result(layout: Layout) -> None:
    built = twelve(layout)
    # 78000 -> 50000: m11 (12000) + m10 (11000) + m9 (10000) = 33000 >= 28000.
    code, report, err = gc_json(
        "--cache-root", str(layout.root), "--max-bytes", "50K", "--no-cluster"
    )
    assert code == 0, err
    assert "--no-cluster" in err
    assert "NOT checked" in err
    plan = report["plan"]
    assert [e["key"] for e in plan["evict"]] == keys(built, 11, 10, 9)
    assert {e["reason"] for e in plan["evict"]} == {"bytes"}
    assert plan["bytes_before"] == 78000
    assert plan["bytes_after"] == 45000
    assert report["outcome"]["evicted"] == keys(built, 11, 10, 9)
    assert report["outcome"]["freed_bytes"] == 33000
    check_volume(layout, keys(built, *range(9)))
    # The sizes add up: what the manifests say is what is on disk.
    on_disk = sum(
        p.stat().st_size
        for p in layout.models.rglob("*")
        if p.name != ".kserve-cache.json"
        if p.is_file()
    )
    assert on_disk == 45000


def test_age_budget_uses_created_at_without_a_usage_record(layout: Layout) -> None:
    built = twelve(layout)
    # Unused for more than 3.5 days: m3 (no record, created 4 days ago) .. m11.
    code, report, err = gc_json(
        "--cache-root", str(layout.root), "--max-age", "3d12h", "--no-cluster"
    )
    assert code == 0, err
    assert [e["key"] for e in report["plan"]["evict"]] == keys(built, *range(11, 2, -1))
    assert {e["reason"] for e in report["plan"]["evict"]} == {"age"}
    check_volume(layout, keys(built, 0, 1, 2))


def test_usage_budget_on_the_real_filesystem(layout: Layout) -> None:
    built = twelve(layout)
    before = tree_state(layout.root)
    code, report, _ = gc_json(
        "--cache-root", str(layout.root), "--max-usage", "100", "--no-cluster"
    )
    assert code == 0
    assert report["plan"]["evict"] == []
    assert 0 < report["plan"]["usage_percent_before"] <= 100
    assert tree_state(layout.root) == before
    # 0 % cannot be reached: everything outside the grace period goes, and gc says so.
    code, report, err = gc_json(
        "--cache-root", str(layout.root), "--max-usage", "0%", "--grace", "2d12h", "--no-cluster"
    )
    assert code == 0
    assert [e["key"] for e in report["plan"]["evict"]] == keys(built, *range(11, 1, -1))
    assert [(e["key"], e["reason"]) for e in report["plan"]["keep"]] == [
        (built[1].key, "grace"),
        (built[0].key, "grace"),
    ]
    assert report["plan"]["over_budget"]
    assert "still over budget" in err
    check_volume(layout, keys(built, 0, 1))


def test_dry_run_prints_the_plan_and_changes_nothing(layout: Layout) -> None:
    built = twelve(layout)
    before = tree_state(layout.root)
    proc = run_cli("gc", "--cache-root", str(layout.root), "--max-bytes", "50K", "--no-cluster",
                   "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line}
    assert lines["KEY"][:5] == ["KEY", "SIZE", "LAST", "USED", "ACTION"]
    for i in (9, 10, 11):
        assert lines[built[i].key][-2:] == ["evict", "bytes"]
    assert lines[built[0].key][-2:] == ["keep", "within-budget"]
    assert "bytes: 76.2 KiB -> 43.9 KiB" in proc.stdout
    assert tree_state(layout.root) == before


def test_keys_of_live_pods_are_protected(layout: Layout, kube: FakeKube, tmp_path: Path) -> None:
    built = twelve(layout)
    kube.set_pods(
        [
            pod("serving", built[11].key, "Running"),
            pod("starting", built[9].key, "Pending"),
            pod("finished", built[10].key, "Succeeded"),
        ]
    )
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    code, report, err = gc_json(
        "--cache-root", str(layout.root), "--max-bytes", "50K", "--kubeconfig", str(config)
    )
    assert code == 0, err
    assert report["plan"]["cluster_checked"] is True
    keep = {e["key"]: e["reason"] for e in report["plan"]["keep"]}
    assert keep[built[11].key] == "in-use"
    assert keep[built[9].key] == "in-use"
    # 28000 to free without m11 and m9: m10 (11000) + m8 (9000) + m7 (8000).
    assert report["outcome"]["evicted"] == keys(built, 10, 8, 7)
    check_volume(layout, keys(built, 0, 1, 2, 3, 4, 5, 6, 9, 11))
    assert any(r.path == "/api/v1/pods" for r in kube.requests)


def test_no_cluster_answer_means_nothing_is_evicted(layout: Layout, tmp_path: Path) -> None:
    twelve(layout)
    server = FakeKube().start()
    config = server.write_kubeconfig(tmp_path / "kubeconfig")
    server.stop()  # the API server is gone
    before = tree_state(layout.root)
    proc = run_cli("gc", "--cache-root", str(layout.root), "--max-bytes", "0",
                   "--kubeconfig", str(config))  # fmt: skip
    assert proc.returncode == 1
    assert "cannot list pods, nothing evicted" in proc.stderr
    assert tree_state(layout.root) == before


def test_live_lease_protects_dead_lease_is_removed(layout: Layout) -> None:
    built = twelve(layout)
    live = try_acquire(layout, built[11].key, holder=new_holder_id())
    dead = try_acquire(layout, built[10].key, holder=new_holder_id())
    assert live is not None
    assert dead is not None
    old = time.time() - 600
    os.utime(dead.path, (old, old))
    code, report, err = gc_json(
        "--cache-root", str(layout.root), "--max-bytes", "50K", "--no-cluster"
    )
    assert code == 0, err
    keep = {e["key"]: e["reason"] for e in report["plan"]["keep"]}
    assert keep[built[11].key] == "leased"
    assert report["plan"]["dead_leases"] == [built[10].key]
    assert report["outcome"]["leases_removed"] == [built[10].key]
    # A held lease protects its entry even when it looks dead (its breaking comes after).
    assert keep[built[10].key] == "leased"
    # 28000 over; m11 and m10 are leased: m9 + m8 + m7 = 27000 is not enough, m6 makes 34000.
    assert report["outcome"]["evicted"] == keys(built, 9, 8, 7, 6)
    assert live.is_mine()
    # Broken by creating the next generation, already released: nothing deleted.
    assert dead.path.exists()
    assert dead.superseded()
    assert read_holder(layout, built[10].key) is None
    assert read_holder(layout, built[11].key) is not None
    check_volume(layout, keys(built, *range(6), 10, 11))


def test_grace_protects_recent_use(layout: Layout) -> None:
    built = twelve(layout)
    code, report, _ = gc_json(
        "--cache-root", str(layout.root), "--max-bytes", "0", "--grace", "2d12h", "--no-cluster"
    )
    assert code == 0
    assert [e["key"] for e in report["plan"]["keep"]] == keys(built, 1, 0)
    assert {e["reason"] for e in report["plan"]["keep"]} == {"grace"}
    check_volume(layout, keys(built, 0, 1))


def test_stale_staging_goes_live_and_fresh_staging_stays(layout: Layout) -> None:
    built = twelve(layout)
    old = time.time() - 3600
    stale = layout.staging / f"{built[0].key}.abandoned"
    (stale / "deep").mkdir(parents=True)
    (stale / "deep" / "half.bin").write_bytes(b"x" * 100)
    for path in (stale / "deep" / "half.bin", stale / "deep", stale):
        os.utime(path, (old, old))
    fresh = layout.staging / f"{built[1].key}.running"
    fresh.mkdir()
    leased = layout.staging / f"{built[2].key}.slow"
    leased.mkdir()
    os.utime(leased, (old, old))
    assert try_acquire(layout, built[2].key, holder="slow-downloader") is not None
    code, report, err = gc_json("--cache-root", str(layout.root), "--no-cluster")
    assert code == 0, err
    assert report["plan"]["evict"] == []
    assert report["outcome"]["staging_removed"] == [stale.name]
    assert not stale.exists()
    assert fresh.is_dir()
    assert leased.is_dir()
    check_volume(layout, [b.key for b in built])


def test_gc_sweeps_old_trash_of_a_crashed_run(layout: Layout) -> None:
    built = twelve(layout)
    crashed = layout.trash / f"{built[5].key}.{int(time.time()) - 3600}.abcdef"
    (crashed / "sub").mkdir(parents=True)
    (crashed / "sub" / "left.bin").write_bytes(b"y" * 10)
    recent = layout.trash / f"{built[6].key}.{int(time.time())}.fedcba"
    recent.mkdir()
    code, report, _ = gc_json("--cache-root", str(layout.root), "--no-cluster")
    assert code == 0
    assert report["outcome"]["trash_removed"] == [crashed.name]
    assert not crashed.exists()
    assert recent.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-bytes", "10X"], "not a size"),
        (["--max-usage", "150"], "not a percentage"),
        (["--max-usage", "half"], "not a percentage"),
        (["--max-age", "soon"], "not a duration"),
        (["--grace=-1h"], "not a duration"),
        (["--lease-ttl", "0"], "more than zero"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_and_change_nothing(
    layout: Layout, args: list[str], message: str
) -> None:
    twelve(layout)
    before = tree_state(layout.root)
    proc = run_cli("gc", "--cache-root", str(layout.root), "--no-cluster", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert tree_state(layout.root) == before


def test_missing_cache_root_exits_2(tmp_path: Path) -> None:
    proc = run_cli("gc", "--cache-root", str(tmp_path / "nowhere"), "--no-cluster")
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr
