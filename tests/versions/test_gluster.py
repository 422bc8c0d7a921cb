"""Versions on GlusterFS with three client mounts (three simulated nodes): a refresh on one
node swaps the ref that the others resolve; a pod that started on v1 keeps reading v1; two
nodes refreshing at once download once. Uses the private glusterd of tests/netfs."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.cache.conftest import S3, run_fetch
from tests.netfs import gluster as g
from webhook.cache.layout import Layout
from webhook.cache.refs import fs_lookup, list_versions, read_ref, resolve_subpath

from .helpers import put_model, sha, tree_sha
from .test_refresh import V1, V2, _model, _want

pytestmark = [pytest.mark.netfs, pytest.mark.slow]


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Path, ...]]:
    """A volume of our own on the private glusterd (not the netfs suite's: its name differs),
    mounted by three clients."""
    reason = g.unavailable_reason()
    if reason is not None:
        if os.environ.get("KSERVE_CACHE_REQUIRE_NETFS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    host = g.loopback_host()
    assert host is not None
    glusterd = g.Glusterd()
    glusterd.join()
    try:
        volume = g.Volume(glusterd, host, name=f"kv{os.getpid()}")
        with g._locked():
            volume.create()
        try:
            mounts = volume.configure({})
            name = f"t-{secrets.token_hex(4)}"
            (mounts[0] / name).mkdir()
            roots = tuple(m / name for m in mounts)
            for root in roots:
                root.stat()
            yield roots
            shutil.rmtree(roots[0], ignore_errors=True)
        finally:
            with g._locked():
                volume.destroy()
    finally:
        glusterd.leave()


def _kubelet(root: Path, key: str) -> Path:
    return Path(resolve_subpath(PurePosixPath(root), f"models/{key}", lookup=fs_lookup))


def test_refresh_on_one_node_is_seen_by_the_others(nodes: tuple[Path, ...], s3: S3) -> None:
    uri, key = _model(s3)
    first = run_fetch(uri, nodes[0], env=s3.env(), extra=("--refresh=on-start",), timeout=120)
    assert first.code == 0, first.stderr
    started_on_v1 = _kubelet(nodes[1], key)  # a pod on node 1 starts on v1
    fd = os.open(started_on_v1 / "w.bin", os.O_RDONLY)
    try:
        put_model(s3, uri.split("/", 3)[3], V2)
        s3.reset_counts()
        second = run_fetch(uri, nodes[2], env=s3.env(), extra=("--refresh=on-start",), timeout=120)
        assert second.code == 0, second.stderr
        assert second.result["version"]["check"] == "changed"
        assert s3.counts()["object_gets"] == 2
        want_v2 = _want({**V1, **V2})
        for root in nodes:  # every node's next container start sees v2
            assert tree_sha(_kubelet(root, key)) == want_v2
            hit = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",), timeout=120)
            assert (hit.result["outcome"], hit.result["version"]["check"]) == ("hit", "unchanged")
            assert hit.result["version"]["digest"] == second.result["version"]["digest"]
        assert tree_sha(started_on_v1) == _want(V1)  # node 1's pod still reads v1
        assert sha(os.read(fd, 1 << 20)) == sha(V1["w.bin"])
    finally:
        os.close(fd)
    assert len(list_versions(Layout(nodes[0]), key)) == 2


def test_two_nodes_refreshing_at_once_download_once(nodes: tuple[Path, ...], s3: S3) -> None:
    import json
    import subprocess

    from tests.cache.conftest import fetch_args

    uri, key = _model(s3)
    assert (
        run_fetch(uri, nodes[0], env=s3.env(), extra=("--refresh=on-start",), timeout=120).code == 0
    )
    put_model(s3, uri.split("/", 3)[3], V2)
    s3.reset_counts()
    procs = [
        subprocess.Popen(
            [
                *fetch_args(uri, nodes[i], extra=("--refresh=on-start", "--lease-ttl=5")),
                "--termination-log",
                f"/tmp/kv-term-{os.getpid()}-{i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=s3.env(),
        )
        for i in (1, 2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["outcome"] for r in results).count("miss") == 1
    assert s3.counts()["object_gets"] == 2
    assert len({r["version"]["digest"] for r in results}) == 1
    for root in nodes:
        assert tree_sha(_kubelet(root, key)) == _want({**V1, **V2})
    assert read_ref(Layout(nodes[0]), key).kind == "link"
