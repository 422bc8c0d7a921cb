"""gc on a shared cache: the uses read-only consumers recorded in their usage folder count
(`gc --usage-dir`), and live pods of every namespace protect their entries, whatever the name
of the claim they mount the shared volume by."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.fakekube import FakeKube
from tests.ops.helpers import DAY, build_entry, gc_json
from webhook import names
from webhook.cache.gc import Budget, Entry, Snapshot, plan_gc
from webhook.cache.layout import Layout, list_keys, record_usage
from webhook.cache.readonly import keys_mounted, last_used_elsewhere, merge_usage


def test_merge_usage_takes_the_latest_use(tmp_path: Path) -> None:
    now = time.time()
    one, two = tmp_path / "tenant-a", tmp_path / "tenant-b"
    record_usage(Layout(one), "a-0123456789abcdef", "hit", now=now - 5 * DAY)
    record_usage(Layout(two), "a-0123456789abcdef", "waited", now=now - 1 * DAY)
    snapshot = Snapshot(
        entries=(
            Entry("a-0123456789abcdef", 10, now - 9 * DAY),
            Entry("b-0123456789abcdef", 10, now - 9 * DAY),
        )
    )
    merged = merge_usage(snapshot, [one, two, tmp_path / "absent"])
    assert [e.last_used for e in merged.entries] == [now - 1 * DAY, now - 9 * DAY]
    assert last_used_elsewhere([one], "b-0123456789abcdef") == 0.0
    budget = Budget(max_age=3 * DAY, grace=0)
    plan = plan_gc(merged, budget=budget, now=now, in_use=frozenset())
    assert [d.key for d in plan.evict] == ["b-0123456789abcdef"]
    assert merge_usage(snapshot, []) is snapshot


def pod(namespace: str, key: str, claim: str) -> dict[str, object]:
    status = {"key": key, "pvc": claim, "mode": "mount", "uri": "s3://bucket/x", "version": "0.1.0"}
    return {
        "metadata": {
            "name": f"{namespace}-predictor",
            "namespace": namespace,
            "annotations": {names.STATUS: json.dumps(status)},
        },
        "spec": {
            "volumes": [{"name": "kserve-cache", "persistentVolumeClaim": {"claimName": claim}}]
        },
        "status": {"phase": "Running"},
    }


def mounted_by_hand(namespace: str, key: str, claim: str) -> dict[str, object]:
    """A pod that mounts an entry of the shared volume itself: no status annotation."""
    return {
        "metadata": {"name": f"{namespace}-job", "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "batch",
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models", "subPath": f"models/{key}/"}
                    ],
                }
            ],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim}}],
        },
        "status": {"phase": "Pending"},
    }


def test_keys_mounted() -> None:
    key = "m-0123456789abcdef"
    done = mounted_by_hand("a", key, "c")
    done["status"] = {"phase": "Succeeded"}
    not_a_claim = mounted_by_hand("b", key, "c")
    not_a_claim["spec"]["volumes"] = [{"name": "models", "emptyDir": {}}]  # type: ignore[index]
    other_path = mounted_by_hand("c", key, "c")
    other_path["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = "data/x"  # type: ignore[index]
    assert keys_mounted([mounted_by_hand("d", key, "c")]) == {key}
    assert keys_mounted([done, not_a_claim, other_path, pod("e", key, "c")]) == frozenset()


def test_gc_keeps_what_read_only_tenants_use(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    now = time.time()
    old = now - 20 * DAY
    used_by_reader = build_entry(layout, "reader", size=1000, last_used=old, created_at=old)
    live_elsewhere = build_entry(layout, "tenant", size=1000, last_used=old, created_at=old)
    by_hand = build_entry(layout, "by-hand", size=1000, last_used=old, created_at=old)
    unused = build_entry(layout, "unused", size=1000, last_used=old, created_at=old)
    usage_dir = tmp_path / "usage"
    record_usage(Layout(usage_dir), used_by_reader.key, "hit", now=now - 60)
    with FakeKube() as kube:
        kube.set_pods(
            [
                pod("tenant-b", live_elsewhere.key, "shared-models"),
                mounted_by_hand("tenant-c", by_hand.key, "kserve-model-cache"),
            ]
        )
        config = kube.write_kubeconfig(tmp_path / "kubeconfig")
        args = ["--cache-root", str(layout.root), "--max-age", "7d", "--kubeconfig", str(config)]
        code, report, err = gc_json(*args, "--dry-run")
        assert code == 0, err
        evicted = {d["key"] for d in report["plan"]["evict"]}
        assert evicted == {used_by_reader.key, unused.key}  # without the readers' usage
        code, report, err = gc_json(*args, "--usage-dir", str(usage_dir))
    assert code == 0, err
    kept = {d["key"]: d["reason"] for d in report["plan"]["keep"]}
    assert kept == {
        used_by_reader.key: "grace",
        live_elsewhere.key: "in-use",
        by_hand.key: "in-use",
    }
    assert report["outcome"]["evicted"] == [unused.key]
    assert list_keys(layout) == sorted([used_by_reader.key, live_elsewhere.key, by_hand.key])
