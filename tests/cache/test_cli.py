"""`kserve-cache fetch` as real processes against moto S3, a local HTTP server and file://."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.cache.layout import MANIFEST_NAME, Layout, read_manifest
from webhook.cache.lease import list_leases, read_holder
from webhook.keys import cache_key

from .conftest import BUCKET, S3, fetch_args, run_fetch, tree
from .servers import FileServer

EXIT = {
    "bad-arguments": 2,
    "bad-credentials": 3,
    "not-found": 4,
    "cache-not-writable": 5,
    "disk-full": 6,
    "wait-timeout": 7,
}


def s3_expected(s3: S3, prefix: str) -> dict[str, bytes]:
    return {
        name.removeprefix(prefix).lstrip("/"): body
        for name, body in s3.objects.items()
        if name.startswith(prefix)
    }


def entry(root: Path, key: str) -> dict[str, bytes]:
    files = tree(root / "models" / key)
    files.pop(MANIFEST_NAME, None)
    return files


def assert_nothing_left(root: Path, key: str) -> None:
    layout = Layout(root)
    assert not layout.entry(key).exists()
    assert not layout.staging.exists() or list(layout.staging.iterdir()) == []
    assert read_holder(layout, key) is None


def test_s3_miss_then_hit_with_kserve_storage(s3: S3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/llama"
    root = tmp_path / "cache"
    root.mkdir()
    s3.reset_counts()
    miss = run_fetch(uri, root, env=s3.env())
    assert miss.code == 0, miss.stderr
    pulled = s3.counts()["object_bytes"]
    hit = run_fetch(uri, root, env=s3.env())

    expected = s3_expected(s3, "llama")
    assert miss.result["outcome"] == "miss"
    assert hit.result["outcome"] == "hit"
    assert miss.result["bytes"] == hit.result["bytes"] == sum(map(len, expected.values()))
    assert entry(root, cache_key(uri)) == expected
    assert pulled == sum(map(len, expected.values()))
    assert s3.counts()["object_bytes"] == pulled  # the hit pulled nothing


def test_eight_processes_one_download(s3: S3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/llama/weights"
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    s3.reset_counts()
    procs = []
    for i in range(8):
        extra = ("--copy-to", str(tmp_path / f"pod-{i}")) if i % 2 else ()
        args = fetch_args(uri, root, extra=(*extra, "--termination-log", str(tmp_path / "t")))
        procs.append(
            subprocess.Popen(args, env=s3.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outcomes.append(json.loads(out)["outcome"])

    expected = s3_expected(s3, "llama/weights")
    size = sum(map(len, expected.values()))
    assert outcomes.count("miss") == 1
    assert set(outcomes) - {"miss"} <= {"hit", "waited"}
    assert s3.counts()["object_bytes"] == size  # exactly one download reached the store
    assert entry(root, key) == expected
    for i in range(1, 8, 2):
        assert tree(tmp_path / f"pod-{i}") == expected
    assert list((root / ".staging").iterdir()) == []
    # One lease file per generation, released, never deleted; no temporary file left.
    assert [v.held for v in list_leases(Layout(root))] == [False]
    assert all(not p.name.startswith(".") for p in (root / ".locks").iterdir())


def test_http_and_file_sources(http_server: FileServer, tmp_path: Path) -> None:
    body = os.urandom(200_000)
    http_server.files["/m/model.bin"] = body
    uri = http_server.url("/m/model.bin")
    root = tmp_path / "cache"
    root.mkdir()
    first = run_fetch(uri, root)
    second = run_fetch(uri, root)
    assert (first.code, second.code) == (0, 0), first.stderr
    assert (first.result["outcome"], second.result["outcome"]) == ("miss", "hit")
    assert entry(root, cache_key(uri)) == {"model.bin": body}
    assert http_server.gets["/m/model.bin"] == 1

    source = tmp_path / "src" / "bert"
    (source / "tok").mkdir(parents=True)
    (source / "weights.bin").write_bytes(body)
    (source / "tok" / "vocab.txt").write_text("a\nb\n")
    file_uri = f"file://{source}"
    run = run_fetch(file_uri, root)
    assert run.code == 0, run.stderr
    files = entry(root, cache_key(file_uri))
    assert files == {"weights.bin": body, "tok/vocab.txt": b"a\nb\n"}
    # KServe links local files; the published entry must hold real copies.
    assert not any(p.is_symlink() for p in (root / "models" / cache_key(file_uri)).rglob("*"))


def _wait_for(predicate: object, timeout: float = 30) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _staged_file(root: Path, name: str) -> Path | None:
    staging = root / ".staging"
    if not staging.exists():
        return None
    found = [p / name for p in staging.iterdir() if (p / name).exists()]
    return found[0] if found else None


@pytest.mark.parametrize("phase", ["mid-download", "downloaded", "sealed"])
def test_kill_9_then_takeover_after_ttl(
    http_server: FileServer, tmp_path: Path, phase: str
) -> None:
    body = os.urandom(2_000_000)
    path = f"/kill-{phase}/model.bin"
    http_server.files[path] = body
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    env = dict(os.environ)
    if phase == "mid-download":
        http_server.throttle[path] = 0.05  # about 1.5 s for the whole file
    else:
        env["KSERVE_CACHE_TEST_PAUSE_AT"] = f"{phase}=60"
    args = fetch_args(uri, root, extra=("--lease-ttl", "1", "--termination-log", "/dev/null"))
    proc = subprocess.Popen(
        args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if phase == "mid-download":
            _wait_for(lambda: (f := _staged_file(root, "model.bin")) and f.stat().st_size > 0)
        elif phase == "downloaded":
            _wait_for(
                lambda: (f := _staged_file(root, "model.bin")) and f.stat().st_size == len(body)
            )
            time.sleep(0.3)  # the pause hook runs right after the download returns
        else:
            _wait_for(lambda: _staged_file(root, MANIFEST_NAME) is not None)
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the container dies with all its processes
        proc.wait()
    http_server.throttle.pop(path, None)

    layout = Layout(root)
    assert not layout.entry(key).exists()  # nothing partial is ever visible
    assert read_holder(layout, key) is not None  # the dead holder's lease is left behind
    if phase == "mid-download":
        staged = _staged_file(root, "model.bin")
        assert staged is not None
        assert 0 < staged.stat().st_size < len(body)

    run = run_fetch(uri, root, extra=("--lease-ttl", "1"))
    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "miss"
    assert entry(root, key) == {"model.bin": body}
    manifest = read_manifest(layout, key)
    assert manifest is not None
    assert manifest.bytes == len(body)
    assert read_holder(layout, key) is None
    assert list(layout.staging.iterdir()) == []  # the dead holder's staging was cleaned


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real full disk (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_publishes_nothing(http_server: FileServer, small_fs: Path) -> None:
    http_server.files["/big/model.bin"] = os.urandom(3_000_000)
    uri = http_server.url("/big/model.bin")
    run = run_fetch(uri, small_fs)
    assert run.code == EXIT["disk-full"], run.stderr
    assert run.result["outcome"] == "error"
    assert run.result["error"] == "disk-full"
    assert "no space left" in run.termination.lower()
    assert "nothing was published" in run.termination
    assert_nothing_left(small_fs, cache_key(uri))


def test_read_only_cache_volume(http_server: FileServer, small_fs: Path) -> None:
    http_server.files["/ro/model.bin"] = b"x" * 1000
    uri = http_server.url("/ro/model.bin")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    run = run_fetch(uri, small_fs)
    assert run.code == EXIT["cache-not-writable"], run.stderr
    assert run.result["error"] == "cache-not-writable"
    assert "read-only" in run.termination
    assert list(small_fs.iterdir()) == []


def test_bad_credentials(s3: S3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/llama"
    root = tmp_path / "cache"
    root.mkdir()
    run = run_fetch(uri, root, env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert run.code == EXIT["bad-credentials"], run.stderr
    assert run.result["error"] == "bad-credentials"
    assert "credentials" in run.termination
    assert_nothing_left(root, cache_key(uri))


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(f"s3://{BUCKET}/no-such-model", id="missing-prefix"),
        pytest.param("s3://no-such-bucket/llama", id="missing-bucket"),
    ],
)
def test_missing_object(s3: S3, tmp_path: Path, uri: str) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    run = run_fetch(uri, root, env=s3.env())
    assert run.code == EXIT["not-found"], run.stderr
    assert run.result["error"] == "not-found"
    assert uri in run.termination
    assert_nothing_left(root, cache_key(uri))


def test_http_404_is_not_found(http_server: FileServer, tmp_path: Path) -> None:
    uri = http_server.url("/absent/model.bin")
    root = tmp_path / "cache"
    root.mkdir()
    run = run_fetch(uri, root)
    assert run.code == EXIT["not-found"], run.stderr
    assert_nothing_left(root, cache_key(uri))


def test_wait_timeout_exit_code(tmp_path: Path) -> None:
    uri = "s3://bucket/held-model"
    key = cache_key(uri)
    root = tmp_path / "cache"
    (root / ".locks").mkdir(parents=True)
    (root / ".locks" / key).write_text(json.dumps({"holder": "pod-a/1/x", "created": 0}))
    run = run_fetch(uri, root, extra=("--wait-timeout", "0.5"))
    assert run.code == EXIT["wait-timeout"]
    assert run.result["error"] == "wait-timeout"
    assert "pod-a/1/x" in run.termination
    assert not (root / "models" / key).exists()


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        pytest.param(cache_key("s3://bucket/other"), (), id="key-mismatch"),
        pytest.param("Not_A_Key", (), id="invalid-key"),
        pytest.param(None, ("--lease-ttl", "0"), id="zero-ttl"),
    ],
)
def test_bad_arguments_change_nothing(
    tmp_path: Path, key: str | None, extra: tuple[str, ...]
) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    run = run_fetch("s3://bucket/model", root, key=key, extra=extra)
    assert run.code == EXIT["bad-arguments"]
    assert run.result["error"] == "bad-arguments"
    assert run.termination.startswith("kserve-cache fetch: bad-arguments:")
    assert list(root.iterdir()) == []
