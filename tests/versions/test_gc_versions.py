"""`kserve-cache gc` with versions, as a real process against the fake API server: an old
version stays while a live pod started on it, goes after; the current version stays whole."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.cache.conftest import S3, run_fetch
from tests.fakekube import FakeKube
from tests.ops.helpers import gc_json, pod
from webhook.cache.layout import Layout
from webhook.cache.refs import list_versions, read_ref

from .helpers import put_model, tree_sha
from .test_refresh import V1, V2, _kubelet, _model, _want

pytestmark = pytest.mark.slow  # real fetch processes, a few seconds each


def test_gc_keeps_an_old_version_while_its_pod_lives(
    s3: S3, kube: FakeKube, tmp_path: Path
) -> None:
    uri, key = _model(s3)
    root = tmp_path / "cache"
    root.mkdir()
    first = run_fetch(uri, root, env=s3.env(POD_NAME="pod-old"), extra=("--refresh=on-start",))
    assert first.code == 0, first.stderr
    v1 = first.result["version"]["id"]
    put_model(s3, uri.split("/", 3)[3], V2)
    second = run_fetch(uri, root, env=s3.env(POD_NAME="pod-new"), extra=("--refresh=on-start",))
    v2 = second.result["version"]["id"]
    assert v1 != v2
    layout = Layout(root)
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    # Age both versions past the grace period.
    old = time.time() - 7200
    for v in (v1, v2):
        os.utime(root / "versions" / key / v, (old, old))
    (root / "versions" / key / ".served.json").write_text(
        json.dumps({"pod-old": {"version": v1, "at": old}, "pod-new": {"version": v2, "at": old}})
    )

    kube.set_pods([pod("pod-old", key, "Running"), pod("pod-new", key, "Running")])
    code, report, err = gc_json("--cache-root", str(root), "--kubeconfig", str(config))
    assert code == 0, err
    assert [(v["version"], v["action"]) for v in report["old_versions"]] == [(v1, "keep")]
    assert list_versions(layout, key) == sorted([v1, v2])

    kube.set_pods([pod("pod-new", key, "Running")])  # the pod that started on v1 is gone
    code, report, err = gc_json("--cache-root", str(root), "--kubeconfig", str(config))
    assert code == 0, err
    assert report["old_versions_evicted"] == [f"{key}/{v1}"]
    assert list_versions(layout, key) == [v2]
    assert read_ref(layout, key).version == v2
    assert tree_sha(_kubelet(root, key)) == _want({**V1, **V2})


def test_gc_evicting_a_key_removes_its_versions_not_just_the_link(s3: S3, tmp_path: Path) -> None:
    uri, key = _model(s3)
    root = tmp_path / "cache"
    root.mkdir()
    assert run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",)).code == 0
    usage = root / ".usage" / key
    data = json.loads(usage.read_text())
    data["last_used"] = time.time() - 30 * 86400
    data["recent"] = []
    usage.write_text(json.dumps(data))
    manifest_path = root / "models" / key / ".kserve-cache.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = time.time() - 30 * 86400
    manifest_path.write_text(json.dumps(manifest))
    code, report, err = gc_json("--cache-root", str(root), "--no-cluster", "--max-age", "1d")
    assert code == 0, err
    assert report["outcome"]["evicted"] == [key]
    assert not (root / "models" / key).is_symlink()
    assert not (root / "versions" / key).exists()
    assert list((root / ".trash").iterdir()) == []
    assert _want(V1)  # the source itself is untouched
