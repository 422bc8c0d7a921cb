"""What the protocol promises on a shared filesystem, forced on the local one with real
processes and threads: remove-vs-publish has one winner, a paused holder is taken over without
harm, a hit is only reported on a whole entry, the endpoint is recorded and checked, and a
permission problem is told apart from a lost race."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.cache.fetch import ErrorKind, FetchError, fetch_entry, publish, seal
from webhook.cache.layout import (
    MANIFEST_NAME,
    Layout,
    Manifest,
    discard,
    read_manifest,
    verify_entry_sizes,
)
from webhook.cache.lease import generations, read_holder
from webhook.keys import cache_key

from .conftest import BUCKET, S3, fetch_args, run_fetch, tree
from .servers import FileServer


def sha_tree(folder: Path) -> dict[str, str]:
    files = tree(folder)
    files.pop(MANIFEST_NAME, None)
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def sealed_staging(layout: Layout, key: str, files: dict[str, bytes]) -> Path:
    staging = layout.new_staging(key)
    staging.mkdir(parents=True)
    for name, body in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(body)
    entries = seal(staging)
    manifest = Manifest(uri="s3://b/m", revision="", key=key, files=entries,
                        bytes=sum(f.size for f in entries), created_at=time.time(),
                        download_seconds=0.0, endpoint="")  # fmt: skip
    (staging / MANIFEST_NAME).write_text(manifest.to_json())
    return staging


def test_remove_versus_publish_has_exactly_one_winner(tmp_path: Path) -> None:
    """A new holder renaming an old holder's staging aside while the old holder publishes it:
    either the entry is published whole, or nothing is; never a published folder emptied."""
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    key = cache_key("s3://b/m")
    files = {f"shard{i}/part{j}.bin": os.urandom(2048) for i in range(4) for j in range(25)}
    expected = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    wins = {"publish": 0, "remove": 0}
    for _ in range(40):
        staging = sealed_staging(layout, key, files)
        barrier = threading.Barrier(2)
        outcome: dict[str, bool] = {}

        def publisher(staging: Path, outcome: dict[str, bool], barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                outcome["published"] = publish(layout, key, staging)
            except OSError:
                outcome["published"] = False

        def remover(staging: Path, outcome: dict[str, bool], barrier: threading.Barrier) -> None:
            barrier.wait()
            outcome["removed"] = discard(layout, staging, key=key)

        threads = [
            threading.Thread(target=f, args=(staging, outcome, barrier))
            for f in (publisher, remover)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcome["published"] != outcome["removed"], outcome
        if outcome["published"]:
            wins["publish"] += 1
            manifest = read_manifest(layout, key)
            assert manifest is not None
            assert verify_entry_sizes(layout.entry(key), manifest) == []
            assert sha_tree(layout.entry(key)) == expected
            shutil.rmtree(layout.entry(key))
        else:
            wins["remove"] += 1
            assert not layout.entry(key).exists()
        assert list(layout.staging.iterdir()) == []
        assert list(layout.trash.iterdir()) == []
    print(f"remove-vs-publish: {wins}")


def test_a_paused_holder_is_taken_over_and_never_publishes_over_the_new_one(
    http_server: FileServer, tmp_path: Path
) -> None:
    """Holder A stops (SIGSTOP: a frozen VM, a long GC pause) with its download sealed; B sees
    A's lease unchanged for TTL + margin, takes generation 2, renames A's staging aside,
    downloads and publishes. A wakes up, sees generation 2, does not publish, and ends as a
    waiter on B's entry."""
    body = os.urandom(300_000)
    path = "/paused/model.bin"
    http_server.files[path] = body
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    env = {**os.environ, "KSERVE_CACHE_TEST_PAUSE_AT": "sealed=2"}
    args = fetch_args(uri, root, extra=("--lease-ttl", "1", "--termination-log", "/dev/null"))
    log = tmp_path / "a.log"
    with log.open("w") as stderr:
        a = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    layout = Layout(root)
    deadline = time.monotonic() + 60
    while "pausing" not in log.read_text():  # sealed: the manifest is written, not yet renamed
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = run_fetch(uri, root, extra=("--lease-ttl", "1"))
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out, _ = a.communicate(timeout=60)
    err = log.read_text()
    assert b.code == 0, b.stderr
    assert b.result["outcome"] == "miss"
    assert a.returncode == 0, err
    assert json.loads(out)["outcome"] == "waited"
    assert "taken over" in err or "lost the lease" in err
    assert sha_tree(layout.entry(key)) == {"model.bin": hashlib.sha256(body).hexdigest()}
    assert http_server.gets[path] == 2
    assert generations(layout, key) == [1, 2]
    assert read_holder(layout, key) is None
    assert list(layout.staging.iterdir()) == []
    assert list(layout.trash.iterdir()) == []


def test_an_entry_with_a_wrong_or_missing_file_is_a_miss(
    http_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(200_000)
    http_server.files["/check/model.bin"] = body
    http_server.files["/check/config.json"] = b"{}"
    uri = http_server.url("/check/model.bin")
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    assert run_fetch(uri, root).code == 0
    weights = root / "models" / key / "model.bin"
    for damage in ("truncate", "remove"):
        if damage == "truncate":
            with weights.open("r+b") as f:
                f.truncate(1000)  # as a copy-based "rename" leaves it, or a lost write
        else:
            weights.unlink()
        run = run_fetch(uri, root)
        assert run.code == 0, run.stderr
        assert run.result["outcome"] == "miss"
        assert "does not match its manifest" in run.stderr
        assert sha_tree(root / "models" / key) == {"model.bin": hashlib.sha256(body).hexdigest()}
        assert list((root / ".trash").iterdir()) == []
    assert http_server.gets["/check/model.bin"] == 3


def test_verify_entry_sizes_names_every_problem(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    key = cache_key("s3://b/m")
    staging = sealed_staging(layout, key, {"a.bin": b"a" * 10, "sub/b.bin": b"b" * 20})
    manifest = Manifest.from_json((staging / MANIFEST_NAME).read_text())
    assert verify_entry_sizes(staging, manifest) == []
    (staging / "a.bin").write_bytes(b"a" * 9)
    (staging / "sub" / "b.bin").unlink()
    (staging / "sub" / "b.bin").mkdir()
    assert verify_entry_sizes(staging, manifest) == [
        "a.bin: 9 bytes, the manifest says 10",
        "sub/b.bin: not a regular file",
    ]
    shutil.rmtree(staging / "sub")
    assert verify_entry_sizes(staging, manifest)[1] == "sub/b.bin: missing"


# --- the source endpoint -----------------------------------------------------------------


def test_the_manifest_records_the_endpoint_and_another_one_is_refused(
    s3: S3, tmp_path: Path
) -> None:
    uri = f"s3://{BUCKET}/llama"
    key = cache_key(uri)  # the webhook saw no endpoint: it came from a Secret
    root = tmp_path / "cache"
    root.mkdir()
    first = run_fetch(uri, root, env=s3.env())
    assert first.code == 0, first.stderr
    manifest = read_manifest(Layout(root), key)
    assert manifest is not None
    assert manifest.endpoint == s3.endpoint  # http://127.0.0.1:<port>
    # The same key from another store (here the same server under another name).
    other = s3.endpoint.replace("127.0.0.1", "localhost")
    run = run_fetch(uri, root, env=s3.env(AWS_ENDPOINT_URL=other))
    assert run.code == 11
    assert run.result["error"] == "source-mismatch"
    assert s3.endpoint in run.result["message"]
    assert other in run.result["message"]
    assert "source-mismatch" in run.termination
    # A manifest of an earlier release (no endpoint field) is accepted.
    path = Layout(root).manifest(key)
    data = json.loads(path.read_text())
    del data["endpoint"]
    path.write_text(json.dumps(data))
    again = run_fetch(uri, root, env=s3.env(AWS_ENDPOINT_URL=other))
    assert (again.code, again.result["outcome"]) == (0, "hit")


def test_the_endpoint_flag_is_part_of_the_key(s3: S3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/llama"
    root = tmp_path / "cache"
    root.mkdir()
    endpoint = s3.endpoint
    key = cache_key(uri, "", endpoint)
    wrong = run_fetch(
        uri, root, env=s3.env(), key=cache_key(uri), extra=(f"--endpoint={endpoint}",)
    )
    assert wrong.code == 2
    assert "endpoint=" in wrong.result["message"]
    assert list(root.iterdir()) == []  # bad input changes nothing
    run = run_fetch(uri, root, env=s3.env(), key=key, extra=(f"--endpoint={endpoint}",))
    assert run.code == 0, run.stderr
    assert run.result["key"] == key
    expected = {
        k.removeprefix("llama/"): v for k, v in s3.objects.items() if k.startswith("llama/")
    }
    assert sha_tree(root / "models" / key) == {
        k: hashlib.sha256(v).hexdigest() for k, v in expected.items()
    }


# --- permissions ---------------------------------------------------------------------------


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A root-owned 0755 cache root that uid 65534 can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="kc-perm-"))
    base.chmod(0o755)
    root = base / "cache"
    root.mkdir(mode=0o755)
    try:
        yield root
    finally:
        shutil.rmtree(base)


def test_a_root_owned_share_gives_exit_5_with_the_diagnosis(
    http_server: FileServer, shared_root: Path
) -> None:
    """EACCES from the cache volume is `cache-not-writable` (5), never the generic 1, and the
    message names the owner, the mode, our ids and the fix."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run fetch as another user")
    http_server.files["/perm/model.bin"] = b"x" * 1000
    uri = http_server.url("/perm/model.bin")
    args = fetch_args(uri, shared_root, extra=("--termination-log", "/dev/null",
                                               "--allow-unsafe-volume"))  # fmt: skip
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    line = json.loads(lines[0])
    assert proc.returncode == 5, proc.stderr
    assert line["error"] == "cache-not-writable"
    message = line["message"]
    assert "owned by uid 0 gid 0 with mode 0755" in message
    assert "uid 65534" in message
    assert "fsGroup" in message
    assert "prepare-volume" in message
    assert "g+rwxs" in message
    assert list(shared_root.iterdir()) == []


@pytest.mark.parametrize("code", [13, 1], ids=["eacces", "eperm"])
def test_permission_errors_of_the_volume_map_to_cache_not_writable(
    tmp_path: Path, code: int
) -> None:
    layout = Layout(tmp_path / "cache")
    layout.root.mkdir()

    def failing(_uri: str, out: Path) -> None:
        raise OSError(code, os.strerror(code), str(out / "part.bin"))

    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri="s3://b/m", key=cache_key("s3://b/m"), downloader=failing)
    assert err.value.kind is ErrorKind.CACHE_NOT_WRITABLE
    assert err.value.kind.exit_code == 5
    assert "owned by uid" in err.value.message
    assert list(layout.staging.iterdir()) == []


def test_the_python_api_refuses_a_missing_cache_root(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "not-mounted")
    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri="s3://b/m", key=cache_key("s3://b/m"), downloader=print)
    assert err.value.kind is ErrorKind.CACHE_NOT_WRITABLE
    assert not layout.root.exists()


def test_an_unreachable_http_source_is_not_blamed_on_s3_variables(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "cache"
    root.mkdir()
    run = run_fetch(f"http://127.0.0.1:{port}/m/model.bin", root)
    assert run.code == 8, run.stderr
    assert run.result["error"] == "unreachable"
    assert "check the URL's host and port" in run.result["message"]
    assert "AWS_ENDPOINT_URL" not in run.result["message"]


def test_many_waiters_take_a_dead_lease_over_exactly_once(
    http_server: FileServer, tmp_path: Path
) -> None:
    """kill -9 of the holder, then six pods at once: they all watch the dead lease for
    TTL x 1.25, all try generation 2 at the same moment, and exactly one downloads."""
    body = os.urandom(500_000)
    path = "/takeover/model.bin"
    http_server.files[path] = body
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    env = {**os.environ, "KSERVE_CACHE_TEST_PAUSE_AT": "leased=60"}
    args = fetch_args(uri, root, extra=("--lease-ttl", "1", "--termination-log", "/dev/null"))
    dead = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    layout = Layout(root)
    deadline = time.monotonic() + 60
    while read_holder(layout, key) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    dead.kill()
    dead.wait()
    waiters = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outcomes = []
    for proc in waiters:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes.append(json.loads(out)["outcome"])
    assert sorted(outcomes) == ["miss", *["waited"] * 5]
    assert http_server.gets.get(path, 0) == 1  # the dead holder paused before downloading
    assert sha_tree(layout.entry(key)) == {"model.bin": hashlib.sha256(body).hexdigest()}
    assert generations(layout, key) == [1, 2]
    assert list(layout.staging.iterdir()) == []
