"""`kserve-cache fetch --read-only` end to end: real fetch and warm processes, the local S3
server, and the cache seen through a real read-only bind mount (and a writable bind, to show
fetch does not even try to write). Every test checks what was served (sha256) and that the
volume did not change (no new files or folders, sizes and mtimes as before)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import BUCKET, CLI, S3, fetch_args, run_fetch, tree
from webhook.cache.layout import Layout, read_usage
from webhook.keys import cache_key, source_endpoint

from .conftest import SharedCache

URI = f"s3://{BUCKET}/llama"


def model_files(s3: S3) -> dict[str, str]:
    """The model's files as the pod must see them, by relative path, with their sha256."""
    return {
        name.removeprefix("llama/"): hashlib.sha256(body).hexdigest()
        for name, body in s3.objects.items()
        if name.startswith("llama/")
    }


def digests(folder: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256(body).hexdigest()
        for name, body in tree(folder).items()
        if name != ".kserve-cache.json"
    }


def volume_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path on the volume with its type, size, mode and mtime (ns): any write shows."""
    state: dict[str, tuple[Any, ...]] = {".": _stat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            state[path.relative_to(root).as_posix()] = _stat(path)
    return state


def _stat(path: Path) -> tuple[Any, ...]:
    st = path.lstat()
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)


def warm(s3: S3, root: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(CLI), "warm", "--uri", URI, "--cache-root", str(root)],
        capture_output=True,
        text=True,
        env=s3.env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def endpoint_of(s3: S3) -> str:
    """The endpoint the webhook would mix into the key (the S3 server's, a plain env var)."""
    return source_endpoint(URI, s3.env())


def key_of(s3: S3) -> str:
    return cache_key(URI, "", endpoint_of(s3))


def read_only(s3: S3, *extra: str) -> tuple[str, ...]:
    return ("--read-only", f"--endpoint={endpoint_of(s3)}", *extra)


@pytest.mark.parametrize("mode", ["mount", "copy"])
def test_hit_is_served_and_nothing_is_written(
    s3: S3, shared: SharedCache, tmp_path: Path, mode: str
) -> None:
    published = warm(s3, shared.writer)
    key = published["key"]
    before = volume_state(shared.writer)
    s3.reset_counts()
    copy_to = tmp_path / "mnt-models"
    extra = read_only(s3, "--copy-to", str(copy_to)) if mode == "copy" else read_only(s3)
    run = run_fetch(URI, shared.reader, env=s3.env(), key=key, extra=extra)
    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "hit"
    assert run.result["read_only"] is True
    assert run.result["usage"] == "not-recorded"
    served = copy_to if mode == "copy" else shared.reader / "models" / key
    assert digests(served) == model_files(s3)
    assert s3.counts()["object_gets"] == 0
    assert volume_state(shared.writer) == before


def test_miss_waits_for_a_trusted_writer_then_hits(s3: S3, read_only_bind: SharedCache) -> None:
    key = key_of(s3)
    term = read_only_bind.writer.parent / "termination.log"
    args = fetch_args(
        URI, read_only_bind.reader, key=key, extra=read_only(s3, "--miss-wait", "120")
    )
    with subprocess.Popen(
        [*args, "--termination-log", str(term)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=s3.env(),
    ) as proc:
        try:
            assert proc.stderr is not None
            seen = []
            for line in proc.stderr:  # the reader says it waits before the writer starts
                seen.append(line)
                if "waiting up to" in line:
                    break
            assert any("waiting up to" in line for line in seen), seen
            assert proc.poll() is None
            published = warm(s3, read_only_bind.writer)
            assert published["key"] == key
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out.strip())
    assert result["outcome"] == "waited"
    assert result["waited_seconds"] > 0
    assert digests(read_only_bind.reader / "models" / key) == model_files(s3)


def test_miss_times_out_with_a_clear_message(s3: S3, shared: SharedCache) -> None:
    before = volume_state(shared.writer)
    run = run_fetch(
        URI, shared.reader, env=s3.env(), key=key_of(s3), extra=read_only(s3, "--miss-wait", "0.3")
    )
    assert run.code == 7
    assert run.result["error"] == "wait-timeout"
    assert "no trusted writer published it within 0.3s" in run.result["message"]
    assert "on-miss: private" in run.termination
    assert volume_state(shared.writer) == before


def test_private_download_starts_the_pod_and_publishes_nothing(
    s3: S3, shared: SharedCache, tmp_path: Path
) -> None:
    before = volume_state(shared.writer)
    s3.reset_counts()
    copy_to = tmp_path / "mnt-models"
    copy_to.mkdir()
    (copy_to / ".kserve-cache-private.0123456789ab").mkdir()  # left by a failed attempt
    extra = read_only(s3, "--on-miss=private", "--miss-wait=0", f"--copy-to={copy_to}")
    run = run_fetch(URI, shared.reader, env=s3.env(), key=key_of(s3), extra=extra)
    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "private"
    assert run.result["reason"] == "miss"
    assert digests(copy_to) == model_files(s3)
    assert sorted(p.name for p in copy_to.iterdir()) == ["config.json", "weights"]
    assert s3.counts()["object_gets"] == len(model_files(s3))
    assert volume_state(shared.writer) == before
    assert not (shared.writer / "models").exists()


def test_incomplete_entry_is_never_served(s3: S3, shared: SharedCache, tmp_path: Path) -> None:
    key = warm(s3, shared.writer)["key"]
    weights = shared.writer / "models" / key / "weights" / "part-1.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # a damaged entry
    before = volume_state(shared.writer)
    run = run_fetch(URI, shared.reader, env=s3.env(), key=key, extra=read_only(s3, "--miss-wait=0"))
    assert run.code == 12
    assert "part-1.bin: 1000 bytes" in run.result["message"]
    copy_to = tmp_path / "mnt-models"
    extra = read_only(s3, "--on-miss=private", "--miss-wait=0", f"--copy-to={copy_to}")
    run = run_fetch(URI, shared.reader, env=s3.env(), key=key, extra=extra)
    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "private"
    assert run.result["reason"].startswith("incomplete shared entry")
    assert digests(copy_to) == model_files(s3)
    assert volume_state(shared.writer) == before


def test_usage_goes_to_the_usage_dir_only(
    s3: S3, read_only_bind: SharedCache, tmp_path: Path
) -> None:
    key = warm(s3, read_only_bind.writer)["key"]
    usage_dir = tmp_path / "usage"
    usage_dir.mkdir()
    before = volume_state(read_only_bind.writer)
    began = time.time()
    run = run_fetch(
        URI,
        read_only_bind.reader,
        env=s3.env(),
        key=key,
        extra=read_only(s3, f"--usage-dir={usage_dir}"),
    )
    assert run.code == 0, run.stderr
    assert run.result["usage"] == "recorded"
    usage = read_usage(Layout(usage_dir), key)
    assert usage is not None
    assert usage.hits == 1
    assert usage.last_used >= began - 1
    assert volume_state(read_only_bind.writer) == before


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        pytest.param(
            ("--read-only", "--on-miss=private"), "needs --copy-to", id="private-without-copy"
        ),
        pytest.param(("--on-miss=wait",), "only apply with --read-only", id="flag-without-ro"),
        pytest.param(
            ("--read-only", "--miss-wait=-1"), "--miss-wait must be >= 0", id="negative-wait"
        ),
        pytest.param(
            ("--read-only", "--usage-dir=USAGE"), "inside the read-only cache", id="usage-in-cache"
        ),
    ],
)
def test_bad_flags_change_nothing(
    s3: S3, read_only_bind: SharedCache, extra: tuple[str, ...], why: str
) -> None:
    extra = tuple(a.replace("USAGE", str(read_only_bind.reader / "u")) for a in extra)
    before = volume_state(read_only_bind.writer)
    run = run_fetch(
        URI,
        read_only_bind.reader,
        env=s3.env(),
        key=key_of(s3),
        extra=(*extra, f"--endpoint={endpoint_of(s3)}"),
    )
    assert run.code == 2
    assert why in run.result["message"]
    assert volume_state(read_only_bind.writer) == before
