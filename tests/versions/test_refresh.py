"""`kserve-cache fetch --refresh/--digest/--verify` as real processes: moto S3 with overwritten
objects, the HTTP stub with ETags, a stopped source; what is served is checked by sha256."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import BUCKET, CLI, S3, fetch_args, run_fetch
from webhook.cache.layout import Layout
from webhook.cache.refs import fs_lookup, list_versions, read_ref, read_served, resolve_subpath
from webhook.keys import cache_key

from .helpers import put_model, sha, tree_sha
from .stubs import StubServer

pytestmark = pytest.mark.slow  # real fetch processes, a few seconds each

V1 = {"config.json": b'{"v": 1}', "w.bin": os.urandom(200_000)}
V2 = {"config.json": b'{"v": 2}'}  # only config.json is overwritten; w.bin stays


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    return root


def _model(s3: S3) -> tuple[str, str]:
    prefix = f"mut-{os.urandom(4).hex()}"
    put_model(s3, prefix, V1)
    uri = f"s3://{BUCKET}/{prefix}"
    return uri, cache_key(uri)


def _kubelet(root: Path, key: str) -> Path:
    """What a container starting now would get bind-mounted (the kubelet's subPath rule)."""
    from pathlib import PurePosixPath

    return Path(resolve_subpath(PurePosixPath(root), f"models/{key}", lookup=fs_lookup))


def _want(files: dict[str, bytes]) -> dict[str, str]:
    return {name: sha(body) for name, body in files.items()}


def _race(s3: S3, uri: str, root: Path, logs: Path, extras: list[tuple[str, ...]]) -> list[Any]:
    """One fetch process per `extras` entry, all started before any is waited for; the last
    JSON line each printed (each must exit 0)."""
    procs = [
        subprocess.Popen(
            [*fetch_args(uri, root, extra=extra), "--termination-log", str(logs / f"t{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=s3.env(),
        )
        for i, extra in enumerate(extras)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_on_start_follows_an_overwritten_object_and_started_pods_keep_v1(
    s3: S3, tmp_path: Path
) -> None:
    uri, key = _model(s3)
    root = _root(tmp_path)
    first = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert first.code == 0, first.stderr
    assert first.result["outcome"] == "miss"
    v1 = first.result["version"]
    assert v1["digest"].startswith("sha256:")
    assert v1["fingerprint"].startswith("s3:")
    assert read_ref(Layout(root), key).kind == "link"
    started_on_v1 = _kubelet(root, key)  # a pod's bind mount, resolved at its start
    assert tree_sha(started_on_v1) == _want(V1)

    put_model(s3, uri.split("/", 3)[3], V2)  # the training pipeline overwrites config.json
    never = run_fetch(uri, root, env=s3.env(), extra=("--refresh=never",))
    assert never.code == 0, never.stderr
    assert (never.result["outcome"], never.result["version"]["check"]) == ("hit", "not-asked")
    assert never.result["version"]["digest"] == v1["digest"]
    assert tree_sha(_kubelet(root, key)) == _want(V1)

    s3.reset_counts()
    second = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert second.code == 0, second.stderr
    assert second.result["outcome"] == "miss"
    assert second.result["version"]["check"] == "changed"
    v2 = second.result["version"]
    assert v2["digest"] != v1["digest"]
    want_v2 = _want({**V1, **V2})
    assert tree_sha(_kubelet(root, key)) == want_v2
    assert tree_sha(Path(second.result["path"])) == want_v2
    assert tree_sha(started_on_v1) == _want(V1)  # the pod that started on v1 still reads v1
    assert len(list_versions(Layout(root), key)) == 2
    assert s3.counts()["object_gets"] == 2  # one new version, downloaded once

    s3.reset_counts()
    third = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert (third.result["outcome"], third.result["version"]["check"]) == ("hit", "unchanged")
    assert third.result["version"]["digest"] == v2["digest"]
    assert s3.counts()["object_gets"] == 0
    assert f"hit {key} version {v2['id']}" in third.termination


def test_interval_asks_once_per_interval_across_racing_processes(s3: S3, tmp_path: Path) -> None:
    uri, key = _model(s3)
    root = _root(tmp_path)
    assert run_fetch(uri, root, env=s3.env(), extra=("--refresh=interval=1h",)).code == 0
    put_model(s3, uri.split("/", 3)[3], V2)
    s3.reset_counts()
    results = _race(s3, uri, root, tmp_path, [("--refresh=interval=1h",)] * 6)
    checks = sorted(r["version"]["check"] for r in results)
    # The first window's claim was taken by the miss: nobody asks in this window.
    assert checks == ["not-asked"] * 6
    assert s3.counts()["object_gets"] == 0
    # A new window (simulated: the claim files are removed), six racers: one check, one download.
    for claim in (root / "versions" / key).glob(".check-*"):
        claim.unlink()
    logs = tmp_path / "second-window"
    logs.mkdir()
    results = _race(s3, uri, root, logs, [("--refresh=interval=1h",)] * 6)
    asked = [r for r in results if r["version"]["check"] != "not-asked"]
    assert [r["version"]["check"] for r in asked] == ["changed"]
    assert s3.counts()["object_gets"] == 2
    assert tree_sha(_kubelet(root, key)) == _want({**V1, **V2})


def test_two_refreshers_at_once_one_download_both_serve_v2(s3: S3, tmp_path: Path) -> None:
    uri, key = _model(s3)
    root = _root(tmp_path)
    assert run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",)).code == 0
    put_model(s3, uri.split("/", 3)[3], V2)
    s3.reset_counts()
    extras = [
        ("--refresh=on-start", *(("--copy-to", str(tmp_path / f"pod-{i}")) if i % 2 else ()))
        for i in range(4)
    ]
    results = _race(s3, uri, root, tmp_path, extras)
    want = _want({**V1, **V2})
    assert len({r["version"]["digest"] for r in results}) == 1
    assert sorted(r["outcome"] for r in results).count("miss") == 1
    assert s3.counts()["object_gets"] == 2
    for i, r in enumerate(results):
        served = Path(r["copied_to"]) if i % 2 else Path(r["path"])
        assert tree_sha(served) == want
    assert tree_sha(_kubelet(root, key)) == want


def test_ref_swap_during_hits_never_mixes_versions(s3: S3, tmp_path: Path) -> None:
    """Copy-mode hits run while another process refreshes: each copy is all v1 or all v2."""
    uri, _key = _model(s3)
    root = _root(tmp_path)
    assert run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",)).code == 0
    put_model(s3, uri.split("/", 3)[3], V2)
    refresher = subprocess.Popen(
        [*fetch_args(uri, root, extra=("--refresh=on-start",)), "--termination-log",
         str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3.env(),
    )  # fmt: skip
    copies = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dest = tmp_path / f"copy-{len(copies)}"
        run = run_fetch(uri, root, env=s3.env(), extra=("--refresh=never", "--copy-to", str(dest)))
        assert run.code == 0, run.stderr
        copies.append((dest, run.result["version"]["digest"]))
        if refresher.poll() is not None and len(copies) >= 3:
            break
    out, err = refresher.communicate(timeout=60)
    assert refresher.returncode == 0, err
    v2_digest = json.loads(out.strip().splitlines()[-1])["version"]["digest"]
    after = run_fetch(uri, root, env=s3.env(), extra=("--copy-to", str(tmp_path / "last")))
    copies.append((tmp_path / "last", after.result["version"]["digest"]))
    for dest, digest in copies:
        want = _want({**V1, **V2}) if digest == v2_digest else _want(V1)
        assert tree_sha(dest) == want
    assert copies[-1][1] == v2_digest


def test_unreachable_source_serves_the_current_version_with_a_warning(tmp_path: Path) -> None:
    stub = StubServer()
    stub.start()
    stub.put("/model.bin", b"weights-v1" * 1000, modified=1_700_000_000)
    uri = stub.url("/model.bin")
    root = _root(tmp_path)
    try:
        first = run_fetch(uri, root, extra=("--refresh=on-start",))
        assert first.code == 0, first.stderr
        assert first.result["version"]["fingerprint"].startswith("http:")
        stub.put("/model.bin", b"weights-v2" * 1000, modified=1_700_000_100)
        changed = run_fetch(uri, root, extra=("--refresh=on-start",))
        assert changed.result["version"]["check"] == "changed"
        assert tree_sha(Path(changed.result["path"])) == {"model.bin": sha(b"weights-v2" * 1000)}
    finally:
        stub.stop()
    down = run_fetch(uri, root, extra=("--refresh=on-start",))
    assert down.code == 0, down.stderr
    assert down.result["outcome"] == "hit"
    assert down.result["version"]["check"] == "unavailable:unreachable"
    assert any("cannot ask the source" in w for w in down.result["warnings"])
    assert "cannot ask the source" in down.stderr
    assert tree_sha(Path(down.result["path"])) == {"model.bin": sha(b"weights-v2" * 1000)}


def test_flipped_byte_full_verify_refuses_and_digest_pin(s3: S3, tmp_path: Path) -> None:
    uri, _key = _model(s3)
    root = _root(tmp_path)
    first = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    d1 = first.result["version"]["digest"]
    assert run_fetch(uri, root, env=s3.env(), extra=(f"--digest={d1}",)).code == 0

    w = Path(first.result["path"]) / "w.bin"
    data = bytearray(w.read_bytes())
    data[12345] ^= 0xFF
    w.write_bytes(bytes(data))
    sized = run_fetch(uri, root, env=s3.env())  # the default size check cannot see it
    assert sized.code == 0
    full = run_fetch(uri, root, env=s3.env(), extra=("--verify=full",))
    assert full.code == 12
    assert full.result["error"] == "integrity"
    assert "w.bin: hash" in full.result["message"]
    assert "integrity" in full.termination

    wrong = "sha256:" + "0" * 64
    pinned = run_fetch(uri, root, env=s3.env(), extra=(f"--digest={wrong}",))
    assert pinned.code == 12
    assert "pinned digest" in pinned.result["message"]

    # verify finds it and moves it aside; the next start downloads it again, whole.
    check = subprocess.run(
        [str(CLI), "verify", "--cache-root", str(root), "--full", "--quarantine"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 1
    assert "CORRUPT" in check.stdout
    again = run_fetch(uri, root, env=s3.env(), extra=("--verify=full",))
    assert again.code == 0, again.stderr
    assert again.result["outcome"] == "miss"
    assert again.result["version"]["digest"] == d1
    assert tree_sha(Path(again.result["path"])) == _want(V1)


def test_pin_after_a_refresh_copy_mode_serves_the_old_version(s3: S3, tmp_path: Path) -> None:
    uri, _key = _model(s3)
    root = _root(tmp_path)
    d1 = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",)).result["version"]
    put_model(s3, uri.split("/", 3)[3], V2)
    assert run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",)).code == 0
    mount = run_fetch(uri, root, env=s3.env(), extra=(f"--digest={d1['digest']}",))
    assert mount.code == 12
    assert "mount mode serves only the current version" in mount.result["message"]
    dest = tmp_path / "pod"
    copy = run_fetch(
        uri, root, env=s3.env(), extra=(f"--digest={d1['digest']}", "--copy-to", str(dest))
    )
    assert copy.code == 0, copy.stderr
    assert tree_sha(dest) == _want(V1)
    assert copy.result["version"]["digest"] == d1["digest"]


def test_migration_from_a_plain_folder(s3: S3, tmp_path: Path) -> None:
    """An entry published the old way (a plain folder) serves as one version; the first
    changed on-start check moves it under versions/ and swaps in a ref."""
    uri, key = _model(s3)
    root = _root(tmp_path)
    plain = run_fetch(uri, root, env=s3.env())  # refresh=never: today's plain folder
    assert plain.code == 0, plain.stderr
    layout = Layout(root)
    assert read_ref(layout, key).kind == "folder"
    started = _kubelet(root, key)
    fd = os.open(started / "w.bin", os.O_RDONLY)
    same = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert (same.result["outcome"], same.result["version"]["check"]) == ("hit", "unchanged")
    assert read_ref(layout, key).kind == "folder"  # unchanged source: nothing moves
    put_model(s3, uri.split("/", 3)[3], V2)
    moved = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert moved.code == 0, moved.stderr
    assert read_ref(layout, key).kind == "link"
    assert tree_sha(_kubelet(root, key)) == _want({**V1, **V2})
    legacy = [v for v in list_versions(layout, key) if v.startswith("legacy-")]
    assert len(legacy) == 1
    assert sha(os.read(fd, 1 << 20)) == sha(V1["w.bin"])
    os.close(fd)


def test_refresh_refused_on_a_volume_without_symlinks(s3: S3, tmp_path: Path) -> None:
    from webhook.cache.probe import Check, ProbeReport, write_record

    uri, key = _model(s3)
    root = _root(tmp_path)
    write_record(root, ProbeReport(root=str(root), checks=(
        Check("symlink", False, "cannot create one: Operation not permitted", required=False),
    )))  # fmt: skip
    refused = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    assert refused.code == 9
    assert "refresh=never" in refused.result["message"]
    assert not (root / "models").exists() or not any((root / "models").iterdir())
    plain = run_fetch(uri, root, env=s3.env(), extra=("--refresh=never",))
    assert plain.code == 0, plain.stderr
    assert read_ref(Layout(root), key).kind == "folder"


def test_served_versions_are_recorded_per_pod(s3: S3, tmp_path: Path) -> None:
    uri, key = _model(s3)
    root = _root(tmp_path)
    env = s3.env(POD_NAME="pod-a")
    run = run_fetch(uri, root, env=env, extra=("--refresh=on-start",))
    v1 = run.result["version"]
    assert read_served(Layout(root), key)["pod-a"][0] == v1["id"]
    assert f"version {v1['id']}" in run.termination  # kubectl describe pod shows it
    assert v1["digest"] in run.termination
    stats = subprocess.run(
        [str(CLI), "stats", "--cache-root", str(root), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [row] = [k for k in json.loads(stats.stdout)["keys"] if k["key"] == key]
    assert row["version"]["digest"] == v1["digest"]
    assert row["version"]["fingerprint"] == v1["fingerprint"]
    assert row["version"]["age_seconds"] >= 0


@pytest.mark.parametrize(
    "flag", ["--refresh=sometimes", "--verify=half", "--digest=md5:00", "--digest=sha256:xyz"]
)
def test_bad_flags_change_nothing(s3: S3, tmp_path: Path, flag: str) -> None:
    uri, _ = _model(s3)
    root = _root(tmp_path)
    run = subprocess.run(
        [*fetch_args(uri, root, extra=(flag,))], capture_output=True, text=True, env=s3.env(),
        timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert list(root.iterdir()) == []


def test_warm_republishes_a_quarantined_version(s3: S3, tmp_path: Path) -> None:
    uri, key = _model(s3)
    root = _root(tmp_path)
    first = run_fetch(uri, root, env=s3.env(), extra=("--refresh=on-start",))
    (Path(first.result["path"]) / "config.json").write_bytes(b'{"v": 9}')
    check = subprocess.run(
        [str(CLI), "verify", "--cache-root", str(root), "--full", "--quarantine"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 1
    assert read_ref(Layout(root), key).kind == "broken"  # a dangling ref
    warm = subprocess.run(
        # --endpoint= : the key run_fetch uses (the webhook mixed no endpoint into it)
        [str(CLI), "warm", "--uri", uri, "--cache-root", str(root), "--endpoint="],
        capture_output=True, text=True, timeout=120, check=False, env=s3.env(),
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr
    line = json.loads(warm.stdout.strip().splitlines()[-1])
    assert line["outcome"] == "miss"
    assert line["version"]["digest"] == first.result["version"]["digest"]
    assert tree_sha(_kubelet(root, key)) == _want(V1)
